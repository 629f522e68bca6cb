"""Text tables of results; every table is laid out by `format_rows` and nowhere else.

The tables: accuracy per patch size (a training run's end, `compare`), accuracy
per unit of training compute (`compare --x flops`), the evaluate CLI's table and
its progress lines (eval.json rows), and the analyses' tables.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

from flexivit_jax.outputs.eval_names import (FlexiKey, final_eval_curves,
                                             final_eval_metrics, flexi_label,
                                             flexi_sort_key, seqhw_and_patch)


def format_rows(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
  """An aligned text table: the header, a rule of dashes, one line per row.

  Columns are right-aligned, two spaces apart. Floats show two decimals (the
  percentages of most tables); pass a string for any other format.
  """
  cell = lambda c: f"{c:.2f}" if isinstance(c, float) else str(c)
  cells = [[cell(c) for c in header]] + [[cell(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  return "\n".join([line(cells[0]), line(["-" * w for w in widths])]
                   + [line(r) for r in cells[1:]])


def format_eval_line(results: Mapping[str, float], image_size: Optional[int] = None) -> str:
  """'test prec@1  seqhw 2 41.20%  seqhw 4 55.00%' for every evaluator of an eval row
  (its headline metric: miou for a segmentation evaluator)."""
  parts = []
  metrics = final_eval_metrics([results])
  for name, curve in final_eval_curves([results]).items():
    values = sorted(curve, key=lambda v: flexi_sort_key(v, image_size))
    cells = [f"{flexi_label(v).replace('=', ' ')} {curve[v] * 100:.2f}%" for v in values]
    parts.append("  ".join([f"{name} {metrics[name]}"] + cells))
  return "   ".join(parts)


def format_table(results: Mapping[str, Mapping[FlexiKey, float]],
                 image_size: Optional[int] = None,
                 metrics: Optional[Mapping[str, str]] = None,
                 gflops: Optional[Mapping[FlexiKey, float]] = None) -> str:
  """Accuracy per flexi value (seqhw and patch side), one column per evaluator, headed
  by its metric (`metrics[name]`, default prec@1).

  `gflops` (forward GFLOPs per image at each flexi value) adds a last column, so
  the accuracy a finer patch buys is read beside what it costs.
  """
  metrics = metrics or {}
  names = list(results)
  values = sorted({v for r in results.values() for v in r},
                  key=lambda v: flexi_sort_key(v, image_size))
  rows = []
  for v in values:
    seqhw, patch = seqhw_and_patch(v, image_size)
    rows.append([dict(v).get("seqhw", seqhw if seqhw is not None else "-"),
                 patch if patch is not None else "-"]
                + [f"{results[n].get(v, float('nan')) * 100:6.2f}%" for n in names]
                + ([format(gflops[v], ".4g") if v in gflops else "-"] if gflops else []))
  return format_rows(["seqhw", "patch"] + [f"{n} {metrics.get(n, 'prec@1')}" for n in names]
                     + (["GFLOPs/img"] if gflops else []), rows)


def format_compute_table(curves: Mapping[str, list], seqhw) -> str:
  """One line per eval point: run, GFLOPs, prec@1."""
  rows = [[name, f"{gflops:.1f}", f"{acc * 100:.2f}%"]
          for name, points in curves.items() for gflops, acc in points]
  return format_rows(["run", "train GFLOPs", f"prec@1 (seqhw={seqhw})"], rows)


def format_eval_row(row: Mapping) -> str:
  """One grid of an eval.json row on one line (a progress line): seqhw, patch, top1,
  loss, GFLOPs, img/s."""
  patch = "x".join(map(str, row["patch"])) if isinstance(row["patch"], list) else row["patch"]
  gflops = f"  {row['gflops']:.4g} GFLOPs/img" if row.get("gflops") is not None else ""
  return (f"seqhw {row['seqhw']} (patch {patch})  top1 {row['top1'] * 100:.2f}%  "
          f"loss {row['loss']:.4f}{gflops}  {row['img_per_s']:.0f} img/s")


def _grid_sizes_table(rows: Sequence[Mapping], percentages: Sequence[Tuple[str, str]]) -> str:
  """The evaluate CLI's rows, one line per grid size, coarse to fine: seqhw, patch, tokens,
  each (column header, row key) of `percentages` as a percentage, loss, GFLOPs/img, img/s."""
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  return format_rows(
      ["seqhw", "patch", "tokens", *[header for header, _ in percentages], "loss",
       "GFLOPs/img", "img/s"],
      [[r["seqhw"], r["patch"], r["tokens"], *[f"{r[key] * 100:.2f}%" for _, key in percentages],
        f"{r['loss']:.4f}", fmt(r["gflops"], ".4g"), fmt(r["img_per_s"], ".0f")]
       for r in sorted(rows, key=lambda r: r["tokens"])])


def format_eval_table(rows: Sequence[Mapping]) -> str:
  """The evaluate CLI's table of eval.json rows: one line per grid size, coarse to fine."""
  return _grid_sizes_table(rows, (("top-1", "top1"), ("top-5", "top5")))


def format_segmentation_table(rows: Sequence[Mapping]) -> str:
  """The evaluate CLI's table of a segmentation checkpoint: one line per grid size."""
  return _grid_sizes_table(rows, (("mIoU", "miou"), ("pixel acc", "pixel_acc")))


def format_fewshot_table(rows: Sequence[Mapping]) -> str:
  """fewshot.json rows as a table: one line per grid size, one column per dataset/shots."""
  metrics = [k for k in rows[0] if k not in ("seqhw", "patch")] if rows else []
  return format_rows(["seqhw", "patch"] + metrics,
                     [[r["seqhw"], r["patch"]] + [f"{r[m] * 100:.2f}%" for m in metrics]
                      for r in rows])


def format_recall_matrix(report: Mapping, k) -> str:
  """recall@k of a retrieval report: rows the query patch size, columns the gallery's."""
  patches = report["patches"]
  return format_rows([f"R@{k} query\\gallery"] + [f"/{p}" for p in patches],
                     [[f"/{p}"] + [f"{v * 100:.1f}" for v in row]
                      for p, row in zip(patches, report["recall"][str(k)])])
