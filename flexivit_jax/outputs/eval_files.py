"""eval.json / eval.csv, the files the evaluate CLI leaves: written and read here only.

One row per grid size: seqhw, patch, tokens, top1, top5, loss, gflops, img_per_s.
Their table is `tables.format_eval_table`, their plot `plots.plot_accuracy_vs_gflops`.
No JAX needed.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Mapping, Optional, Sequence

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import atomic, plots, tables

EVAL_KEYS = ("seqhw", "patch", "tokens", "top1", "top5", "loss", "gflops", "img_per_s")
EVAL_JSON, EVAL_CSV, EVAL_PNG = "eval.json", "eval.csv", "eval.png"
# A segmentation checkpoint's rows: mIoU and pixel accuracy instead of top-1/top-5.
SEG_KEYS = ("seqhw", "patch", "tokens", "miou", "pixel_acc", "loss", "gflops", "img_per_s")
SEG_NAME = "eval_segmentation"  # .json, .csv, .png


def write_eval(out_dir: str, rows: Sequence[Mapping]) -> list[str]:
  """Writes eval.json and eval.csv into `out_dir`, each atomically; returns their paths."""
  rows = [{k: row[k] for k in EVAL_KEYS} for row in rows]
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=EVAL_KEYS)
  writer.writeheader()
  writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                   for r in rows)
  return [atomic.write_atomic(os.path.join(out_dir, EVAL_JSON), json.dumps(rows, indent=1)),
          atomic.write_atomic(os.path.join(out_dir, EVAL_CSV), text.getvalue())]


def write_segmentation_eval(out_dir: str, rows: Sequence[Mapping], label: str) -> list[str]:
  """eval_segmentation.json/.csv (SEG_KEYS) and .png (mIoU vs GFLOPs/image) in `out_dir`."""
  rows = [{k: row[k] for k in SEG_KEYS} for row in rows]
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=SEG_KEYS)
  writer.writeheader()
  writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                   for r in rows)
  base = os.path.join(out_dir, SEG_NAME)
  paths = [atomic.write_atomic(base + ".json", json.dumps(rows, indent=1)),
           atomic.write_atomic(base + ".csv", text.getvalue())]
  counted = sorted((r for r in rows if r["gflops"]), key=lambda r: r["gflops"])
  if counted:
    paths.append(plots.plot_lines(
        {label: ([r["gflops"] for r in counted], [r["miou"] * 100 for r in counted])},
        base + ".png", xlabel="GFLOPs per image (XLA count, log scale)", ylabel="mIoU (%)",
        title="mIoU vs compute", log_x=True,
        point_labels={label: [f"p{r['patch']}" for r in counted]}))
  return paths


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


def compare_evals(paths: Sequence[str], out: Optional[str] = None) -> str:
  """Several eval.json files on one table and (when `out`) one plot."""
  runs = {os.path.basename(os.path.normpath(p[:-len(EVAL_JSON)] if p.endswith(EVAL_JSON)
                                            else p)) or p: read_eval(p) for p in paths}
  table = "\n\n".join(f"{name}\n{tables.format_eval_table(rows)}" for name, rows in runs.items())
  if out:
    plots.plot_accuracy_vs_gflops(runs, out)
  return table
