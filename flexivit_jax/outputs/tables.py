"""Text tables of eval results: accuracy per patch size, and per unit of compute."""
from __future__ import annotations

from typing import Mapping, Optional

from flexivit_jax.outputs.eval_names import (FlexiKey, final_eval_curves,
                                             flexi_label, flexi_sort_key,
                                             seqhw_and_patch)


def format_eval_line(results: Mapping[str, float], image_size: Optional[int] = None) -> str:
  """'test prec@1  seqhw 2 41.20%  seqhw 4 55.00%' for every evaluator of an eval row."""
  parts = []
  for name, curve in final_eval_curves([results]).items():
    values = sorted(curve, key=lambda v: flexi_sort_key(v, image_size))
    cells = [f"{flexi_label(v).replace('=', ' ')} {curve[v] * 100:.2f}%" for v in values]
    parts.append("  ".join([f"{name} prec@1"] + cells))
  return "   ".join(parts)


def format_table(results: Mapping[str, Mapping[FlexiKey, float]],
                 image_size: Optional[int] = None) -> str:
  """Accuracy per flexi value (seqhw and patch side), one column per evaluator."""
  names = list(results)
  values = sorted({v for r in results.values() for v in r},
                  key=lambda v: flexi_sort_key(v, image_size))
  header = ["seqhw", "patch"] + [f"{n} prec@1" for n in names]
  rows = []
  for v in values:
    seqhw, patch = seqhw_and_patch(v, image_size)
    rows.append([str(dict(v).get("seqhw", seqhw if seqhw is not None else "-")),
                 str(patch if patch is not None else "-")]
                + [f"{results[n].get(v, float('nan')) * 100:6.2f}%" for n in names])
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_compute_table(curves: Mapping[str, list], seqhw) -> str:
  """One line per eval point: run, GFLOPs, prec@1."""
  lines = [f"{'run':>16}  {'train GFLOPs':>14}  prec@1 (seqhw={seqhw})"]
  for name, points in curves.items():
    for gflops, acc in points:
      lines.append(f"{name:>16}  {gflops:14.1f}  {acc * 100:6.2f}%")
  return "\n".join(lines)
