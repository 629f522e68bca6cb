"""Zero-shot PI-resize vs FlexiViT: can a plain ViT just be resized to other patch sizes?

A ViT trained at one patch size and PI-resized at test time to every other size,
side by side with a FlexiViT of the same architecture trained for the same
number of steps on random patch sizes, both evaluated at every grid.

  python -m flexivit_jax.analysis.zero_shot --out OUT [--vit CKPT] [--flexivit CKPT]
      [--dataset cluttered_digits]

results.json is {"vit": {seqhw: top1}, "flexivit": {seqhw: top1}, "gflops": {seqhw: g},
"vit_seqhw": s}; also a table and zero_shot.png.
"""
from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

from flexivit_jax import cli
from flexivit_jax.analysis import common, subjects
from flexivit_jax.evaluators import sweep
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import plots, tables

# The demo's setting: 48 px digits, grids 3..12 (patches 16..4 px), the ViT at 6 (8 px).
IMAGE_SIZE, SEQHWS, VIT_SEQHW = 48, (3, 4, 6, 8, 12), 6
# {dataset: defaults} (--dataset); posemb: the stored position-embedding grid of both
# trained subjects. On cluttered_digits the README demo's: 64 px, grids 4..8, ViT at 8.
FULL = {"sklearn_digits": dict(image_size=IMAGE_SIZE, seqhws=SEQHWS, vit_seqhw=VIT_SEQHW,
                               posemb=6),
        "cluttered_digits": dict(image_size=64, seqhws=(4, 5, 6, 7, 8), vit_seqhw=8, posemb=8)}
RUNLOCAL = {"sklearn_digits": dict(image_size=16, seqhws=(2, 4), vit_seqhw=2, posemb=2),
            "cluttered_digits": dict(image_size=16, seqhws=(2, 4), vit_seqhw=4, posemb=4)}


def per_seqhw(model: FlexiViT, params: Mapping, *, data_cfg: Mapping, pp: str,
              seqhws: Sequence[int], batch_size: int = 100) -> list[dict]:
  """Eval rows of one model at every grid (kernel PI-resized once per grid)."""
  return sweep.evaluate_model(model, params, seqhws, data=data_cfg, pp=pp, batch_size=batch_size)


def zero_shot(vit: tuple, flexivit: tuple, *, data_cfg: Mapping, pp: str,
              seqhws: Sequence[int], batch_size: int = 100, progress=None) -> dict:
  """{"vit": {seqhw: top1}, "flexivit": {...}, "gflops": {...}} for two (model, params).

  `progress` (a metrics.Progress, optional) gets a line per model and grid.
  """
  rows = {}
  for name, subject in (("vit", vit), ("flexivit", flexivit)):
    rows[name] = per_seqhw(*subject, data_cfg=data_cfg, pp=pp, seqhws=seqhws,
                           batch_size=batch_size)
    for row in rows[name] if progress is not None else ():
      progress.line(f"{name}  {tables.format_eval_row(row)}")
  out = {name: {str(r["seqhw"]): r["top1"] for r in rs} for name, rs in rows.items()}
  out["gflops"] = {str(r["seqhw"]): r["gflops"] for r in rows["flexivit"]}
  return out


def table(results: Mapping, image_size: int) -> str:
  seqhws = list(results["vit"])
  rows = [[s, image_size // int(s), f"{results['gflops'][s]:.4g}", results["vit"][s] * 100,
           results["flexivit"][s] * 100] for s in seqhws]
  return tables.format_rows(["seqhw", "patch", "GFLOPs/img", "ViT+PI top-1",
                             "FlexiViT top-1"], rows)


def plot(results: Mapping, path: str, image_size: int) -> str:
  labels = {"vit": f"ViT (trained at seqhw {results['vit_seqhw']}) + PI-resize",
            "flexivit": "FlexiViT"}
  curves = {label: ([image_size // int(s) for s in results[name]],
                    [v * 100 for v in results[name].values()])
            for name, label in labels.items()}
  return plots.plot_lines(curves, path, xlabel="patch size (px)", ylabel="top-1 (%)",
                          title="zero-shot PI-resize vs FlexiViT", invert_x=True,
                          figsize=(5, 3.5))


def _subject(ckpt, args, name, image_size, train_seqhws, posemb):
  if ckpt:
    return subjects.load_subject(ckpt, args.model)
  return subjects.train_subject(
      os.path.join(args.out, name), image_size=image_size, train_seqhws=train_seqhws,
      posemb=posemb, steps=None if args.runlocal else common.steps(args),
      runlocal=args.runlocal, progress=args.progress, dataset=args.dataset)


def build_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(__doc__, "flexivit_jax.analysis.zero_shot")
  p.add_argument("--vit", default=None, help="a fixed-patch ViT checkpoint (default: train one)")
  p.add_argument("--flexivit", default=None, help="a FlexiViT checkpoint (default: train one)")
  p.add_argument("--image_size", type=int, default=None)
  p.add_argument("--seqhw", default=None, help="comma-separated grids to evaluate")
  p.add_argument("--vit_seqhw", type=int, default=None, help="the grid the ViT trains at")
  common.add_subject_args(p, default_steps=1200)
  return p


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  args = build_parser().parse_args(argv)
  cli.quiet_libraries()
  d, image_size = common.setting(args, RUNLOCAL, FULL)
  seqhws = common.int_list(args.seqhw, "--seqhw") if args.seqhw else list(d["seqhws"])
  vit_seqhw = args.vit_seqhw or d["vit_seqhw"]
  posemb = d["posemb"]
  vit = _subject(args.vit, args, "vit", image_size, [vit_seqhw], posemb)
  flexi = _subject(args.flexivit, args, "flexivit", image_size, seqhws, posemb)
  results = zero_shot(vit, flexi, data_cfg=common.eval_data(args),
                      pp=subjects.eval_pp(args.pp, image_size), seqhws=seqhws,
                      batch_size=args.batch_size,
                      progress=common.progress(args, 2 * len(seqhws), "grid"))
  results["vit_seqhw"] = vit_seqhw
  print(table(results, image_size))
  print(f"wrote {common.write_results(args.out, results)}")
  print(f"wrote {plot(results, os.path.join(args.out, 'zero_shot.png'), image_size)}")


if __name__ == "__main__":
  main()
