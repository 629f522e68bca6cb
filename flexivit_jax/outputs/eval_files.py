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
from typing import Mapping, Optional, Sequence, Tuple

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import atomic, plots, tables

EVAL_KEYS = ("seqhw", "patch", "tokens", "top1", "top5", "loss", "gflops", "img_per_s")
EVAL_JSON, EVAL_CSV, EVAL_PNG = "eval.json", "eval.csv", "eval.png"
# A segmentation checkpoint's rows: mIoU and pixel accuracy instead of top-1/top-5.
SEG_KEYS = ("seqhw", "patch", "tokens", "miou", "pixel_acc", "loss", "gflops", "img_per_s")
SEG_NAME = "eval_segmentation"  # .json, .csv, .png


def _write_json_and_csv(json_path: str, csv_path: str, rows: Sequence[Mapping],
                        keys: Sequence[str]) -> Tuple[list[dict], list[str]]:
  """(the rows cut to `keys`, [json_path, csv_path]): the rows as a JSON list and as a CSV
  table with `keys` for columns (a list cell as JSON), each file written atomically."""
  rows = [{k: row[k] for k in keys} for row in rows]
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=keys)
  writer.writeheader()
  writer.writerows({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()}
                   for r in rows)
  return rows, [atomic.write_atomic(json_path, json.dumps(rows, indent=1)),
                atomic.write_atomic(csv_path, text.getvalue())]


def write_eval(out_dir: str, rows: Sequence[Mapping]) -> list[str]:
  """Writes eval.json and eval.csv into `out_dir`, each atomically; returns their paths."""
  _, paths = _write_json_and_csv(os.path.join(out_dir, EVAL_JSON),
                                 os.path.join(out_dir, EVAL_CSV), rows, EVAL_KEYS)
  return paths


def write_segmentation_eval(out_dir: str, rows: Sequence[Mapping], label: str) -> list[str]:
  """eval_segmentation.json/.csv (SEG_KEYS) and .png (mIoU vs GFLOPs/image) in `out_dir`."""
  base = os.path.join(out_dir, SEG_NAME)
  rows, paths = _write_json_and_csv(base + ".json", base + ".csv", rows, SEG_KEYS)
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


# ----------------------------------------------------------------------------
# fewshot.json, retrieval.json (+ retrieval.png): the feature evaluators' reports.

FEWSHOT_JSON, RETRIEVAL_JSON, RETRIEVAL_PNG = "fewshot.json", "retrieval.json", "retrieval.png"
CROSS_PREFIX = "recall@"  # Retrieval metrics: recall@K and recall@K_vs_seqhw=S.


def fewshot_rows(results: Mapping[int, Mapping[str, float]], image_side: int) -> list[dict]:
  """[{seqhw, patch, DATASET_Nshot...}] sorted by seqhw, from {seqhw: accuracies}."""
  return [{"seqhw": s, "patch": image_side // s, **dict(results[s])} for s in sorted(results)]


def retrieval_report(results: Mapping[int, Mapping[str, float]], image_side: int,
                     ks: Sequence[int]) -> dict:
  """{seqhws, patches, recall: {K: [[query i, gallery j]]}} from {seqhw: recalls}."""
  seqhws = sorted(results)
  matrix = lambda k: [[results[q][f"recall@{k}_vs_seqhw={g}"] for g in seqhws] for q in seqhws]
  return {"seqhws": seqhws, "patches": [image_side // s for s in seqhws],
          "recall": {str(k): matrix(k) for k in ks}}


def write_fewshot(out_dir: str, rows: Sequence[Mapping], about: Mapping) -> str:
  """fewshot.json: {about (checkpoint, evaluator config), rows}."""
  return atomic.write_atomic(os.path.join(out_dir, FEWSHOT_JSON),
                             json.dumps({**about, "rows": list(rows)}, indent=1))


def write_retrieval(out_dir: str, report: Mapping, about: Mapping, title: str = "") -> list[str]:
  """retrieval.json and retrieval.png (the recall@1 matrix, query size x gallery size)."""
  path = atomic.write_atomic(os.path.join(out_dir, RETRIEVAL_JSON),
                             json.dumps({**about, **report}, indent=1))
  k = min(report["recall"], key=int)
  png = plots.plot_matrix(
      report["recall"][k], [str(p) for p in report["patches"]], os.path.join(out_dir, RETRIEVAL_PNG),
      xlabel="gallery patch size", ylabel="query patch size",
      title=title or f"recall@{k} (%), query vs gallery patch size")
  return [path, png]
