"""The evaluation report: eval.json / eval.csv, its table, and accuracy-vs-GFLOPs plots.

This module owns the format (it writes and reads it). One row per grid size:
seqhw, patch, tokens, top1, top5, loss, gflops, img_per_s. No JAX needed.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Mapping, Optional, Sequence

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import plots

EVAL_KEYS = ("seqhw", "patch", "tokens", "top1", "top5", "loss", "gflops", "img_per_s")
EVAL_JSON, EVAL_CSV, EVAL_PNG = "eval.json", "eval.csv", "eval.png"


def _write_atomic(path: str, write) -> None:
  with open(path + ".tmp", "w", newline="") as f:
    write(f)
  os.replace(path + ".tmp", path)


def write_eval(out_dir: str, rows: Sequence[Mapping]) -> list[str]:
  """Writes eval.json and eval.csv into `out_dir`; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  rows = [{k: row[k] for k in EVAL_KEYS} for row in rows]
  json_path, csv_path = os.path.join(out_dir, EVAL_JSON), os.path.join(out_dir, EVAL_CSV)
  _write_atomic(json_path, lambda f: json.dump(rows, f, indent=1))

  def write_csv(f):
    writer = csv.DictWriter(f, fieldnames=EVAL_KEYS)
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                     for r in rows)
  _write_atomic(csv_path, write_csv)
  return [json_path, csv_path]


def read_eval(path: str) -> list[dict]:
  """Rows of an eval.json, given the file or the directory holding it."""
  if os.path.isdir(path):
    path = os.path.join(path, EVAL_JSON)
  if not os.path.exists(path):
    raise UserError(f"{path!r} does not exist: run `python -m flexivit_jax.evaluate --out DIR` "
                     "first")
  with open(path) as f:
    rows = json.load(f)
  if not isinstance(rows, list) or any(set(EVAL_KEYS) - set(r) for r in rows):
    raise UserError(f"{path!r} is not an eval.json (a list of rows with keys {EVAL_KEYS})")
  return rows


def has_eval(path: str) -> bool:
  return path.endswith(EVAL_JSON) or os.path.exists(os.path.join(path, EVAL_JSON))


def format_eval_row(row: Mapping) -> str:
  """One grid on one line (a progress line): seqhw, patch, top1, loss, GFLOPs, img/s."""
  patch = "x".join(map(str, row["patch"])) if isinstance(row["patch"], list) else row["patch"]
  gflops = f"  {row['gflops']:.4g} GFLOPs/img" if row.get("gflops") is not None else ""
  return (f"seqhw {row['seqhw']} (patch {patch})  top1 {row['top1'] * 100:.2f}%  "
          f"loss {row['loss']:.4f}{gflops}  {row['img_per_s']:.0f} img/s")


def format_eval_table(rows: Sequence[Mapping]) -> str:
  """The printed table: one line per grid size, coarse to fine."""
  header = ["seqhw", "patch", "tokens", "top-1", "top-5", "loss", "GFLOPs/img", "img/s"]
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  lines = [[str(r["seqhw"]), str(r["patch"]), str(r["tokens"]), f"{r['top1'] * 100:.2f}%",
            f"{r['top5'] * 100:.2f}%", f"{r['loss']:.4f}", fmt(r["gflops"], ".4g"),
            fmt(r["img_per_s"], ".0f")] for r in sorted(rows, key=lambda r: r["tokens"])]
  widths = [max(len(x[i]) for x in [header] + lines) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in lines])


def plot_accuracy_vs_gflops(runs: Mapping[str, Sequence[Mapping]], path: str,
                            title: str = "top-1 vs compute") -> str:
  """PNG of top-1 against GFLOPs/image (log x), one labelled point per patch size."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, rows in runs.items():
    rows = sorted((r for r in rows if r["gflops"]), key=lambda r: r["gflops"])
    xs, ys = [r["gflops"] for r in rows], [r["top1"] * 100 for r in rows]
    ax.plot(xs, ys, marker="o", label=label)
    for r, x, y in zip(rows, xs, ys):
      ax.annotate(f"p{r['patch']}", (x, y), textcoords="offset points", xytext=(3, -10),
                  fontsize=8)
  ax.set_xscale("log")
  return finish_plot(fig, ax, path, "GFLOPs per image (XLA count, log scale)", title)


def finish_plot(fig, ax, path: str, xlabel: str, title: str) -> str:
  """Labels a top-1 (%) plot, saves it as PNG and closes it."""
  return plots.save_plot(fig, ax, path, xlabel=xlabel, ylabel="top-1 (%)", title=title,
                           grid_which="both")


def compare_evals(paths: Sequence[str], out: Optional[str] = None) -> str:
  """Several eval.json files on one table and (when `out`) one plot."""
  runs = {os.path.basename(os.path.normpath(p[:-len(EVAL_JSON)] if p.endswith(EVAL_JSON)
                                            else p)) or p: read_eval(p) for p in paths}
  table = "\n\n".join(f"{name}\n{format_eval_table(rows)}" for name, rows in runs.items())
  if out:
    plot_accuracy_vs_gflops(runs, out)
  return table
