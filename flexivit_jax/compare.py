"""Compares runs: accuracy per patch size, or accuracy against training compute.

  python -m flexivit_jax.compare workdirs/demo workdirs/base --out compare
  python -m flexivit_jax.compare eval_demo eval_base --out compare_evals
  python -m flexivit_jax.compare workdirs/curr workdirs/base --x flops --out compare_flops

`--x seqhw` (default) reads the last evaluation of each run; `--x flops` reads
every evaluation with the cumulative `compute/gflops` logged beside it, at one
seqhw (`--seqhw`, default the largest that every run evaluated). Reads the
runs' metrics.jsonl, and their config.json for the image side (no JAX needed).

When every argument holds an eval.json of `flexivit_jax.evaluate`, plots top-1
against inference GFLOPs instead. Prints the table; `--out DIR` also writes it to
DIR/compare.txt and the plot to DIR/compare.png.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

from flexivit_jax import cli, paths
from flexivit_jax.outputs import atomic, eval_files, eval_names, plots, run_config, runlog, tables
from flexivit_jax.errors import UserError

PLOT, TABLE = "compare.png", "compare.txt"  # What `--out DIR` holds.


def image_size_of(workdir: str, evaluator: Optional[str] = None) -> Optional[int]:
  """The side of the images `evaluator` saw in the run in `workdir` (None if not known)."""
  config = run_config.read(workdir)
  return config.eval_image_size(evaluator) if config else None


def compare(workdirs: Sequence[str], out: Optional[str] = None, evaluator: Optional[str] = None
            ) -> str:
  """Returns the table text; writes the plot to `out` when given."""
  curves, image_size = {}, None
  for wd in workdirs:
    rows = runlog.read_metrics(wd)
    if not rows:
      raise UserError(f"{wd} has no metrics.jsonl: is it a flexivit_jax workdir?")
    per_eval = eval_names.final_eval_curves(rows)
    if not per_eval:
      raise UserError(f"{wd} has no evaluation results yet")
    name = evaluator or sorted(per_eval)[0]
    if name not in per_eval:
      raise UserError(f"{wd} has no evaluator {name!r}; it has {sorted(per_eval)}")
    curves[os.path.basename(os.path.normpath(wd))] = per_eval[name]
    image_size = image_size or image_size_of(wd, name)
  table = tables.format_table(curves, image_size)
  if out:
    plots.plot_accuracy(curves, out, image_size=image_size, title="prec@1 per patch size")
  return table


def _label(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def compare_flops(workdirs: Sequence[str], out: Optional[str] = None,
                  evaluator: Optional[str] = None, seqhw: Optional[int] = None) -> str:
  """prec@1 against cumulative training GFLOPs; returns a table of each run's points."""
  runs = {}
  for wd in workdirs:
    rows = runlog.read_metrics(wd)
    if not rows:
      raise UserError(f"{wd} has no metrics.jsonl: is it a flexivit_jax workdir?")
    runs[_label(wd)] = eval_names.eval_curve_over_compute(rows, evaluator)
    if not runs[_label(wd)]:
      raise UserError(f"{wd} has no evaluation rows with compute/gflops")
  common = set.intersection(*[set(s for _, accs in r for s in accs) for r in runs.values()])
  if seqhw is None:
    if not common:
      raise UserError("the runs share no evaluated seqhw; pass --seqhw")
    seqhw = max(common, key=eval_names.seqhw_side)
  curves = {}
  for name, points in runs.items():
    curves[name] = [(g, accs[seqhw]) for g, accs in points if seqhw in accs]
    if not curves[name]:
      raise UserError(f"run {name} has no evaluation at seqhw={seqhw}")
  if out:
    plots.plot_over_compute(curves, out, title=f"prec@1 at seqhw={seqhw} against compute")
  return tables.format_compute_table(curves, seqhw)


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(__doc__, "flexivit_jax.compare")
  parser.add_argument("workdirs", nargs="+", type=paths.normalize, help="training workdirs, or eval.json dirs/files")
  parser.add_argument("--out", default=None, type=paths.normalize,
                      help=f"directory for the table ({TABLE}) and the plot ({PLOT})")
  parser.add_argument("--eval", default=None, help="evaluator name (default: the first)")
  parser.add_argument("--x", choices=("seqhw", "flops"), default="seqhw",
                      help="x axis: patch size of the final eval, or training GFLOPs")
  parser.add_argument("--seqhw", type=int, default=None,
                      help="with --x flops: the seqhw to plot (default: largest common)")
  return parser


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  plot = os.path.join(args.out, PLOT) if args.out else None  # Its folder made as needed.
  if args.x == "flops":
    table = compare_flops(args.workdirs, plot, args.eval, args.seqhw)
  elif all(eval_files.has_eval(p) for p in args.workdirs):
    table = eval_files.compare_evals(args.workdirs, plot)
  else:
    table = compare(args.workdirs, plot, args.eval)
  print(table)
  if args.out:
    written = atomic.write_atomic(os.path.join(args.out, TABLE), table + "\n")
    print(f"wrote {written} and {plot}")


if __name__ == "__main__":
  main()
