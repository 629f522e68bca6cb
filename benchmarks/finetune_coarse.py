"""Fine-tune coarse, deploy fine, on `cluttered_digits` (the paper's Fig. 8).

Pretrains on the digits 0-4 of `cluttered_digits` (the README demo's config,
`--pretrain_steps` steps, seed 0): a FlexiViT (random patch per step, seqhw
4..8) and a plain ViT at patch 8 (seqhw 8). Then fine-tunes each on the digits
5-9 (labels renumbered 0-4, a new zero-initialised head) at ONE coarse grid
(`--seqhw`, default 5 = 12 px patches) with big_vision's transfer optimiser (SGD
momentum 0.9, lr 0.03, no weight decay, clip 1, warmup + cosine), and evaluates
both at every grid 4..8. The paper's claim: the fine-tuned FlexiViT gains at
grids finer than the one it was fine-tuned at, the ViT degrades off its grid.

  python benchmarks/finetune_coarse.py --root workdirs/finetune_coarse --out docs/figures/finetune_coarse
"""
from __future__ import annotations

import argparse
import os

import cluttered_runs as common  # benchmarks/cluttered_runs.py; puts the repo on sys.path.
from flexivit_jax.outputs import plots, tables

SEQHWS = (4, 5, 6, 7, 8)
FIRST, SECOND = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _on_classes(c, classes):
  """Train and test on `classes` only (renumbered from 0), a 5-way head."""
  c.model.num_classes = len(classes)
  c.input.pp = c.input.pp.replace("onehot(10,", f"onehot({len(classes)},")
  c.evals.test.pp = c.input.pp
  c.input.data = dict(c.input.data, classes=classes)
  c.evals.test.data = dict(c.evals.test.data, classes=classes)
  return c


def pretrain_config(flexi: bool, steps: int):
  return _on_classes(common.demo_config(f"steps={steps}" if flexi else f"baseline,steps={steps}"),
                     FIRST)


def finetune_config(init: str, seqhw: int, steps: int, lr: float = 0.03):
  c = _on_classes(common.demo_config(f"baseline,steps={steps}"), SECOND)
  c.model_init = init
  c.model_load = dict(dont_load=("head/.*",))
  c.flexi = dict(seqhw=dict(v=(seqhw,), p="uniform"))
  c.optax_name = "big_vision.momentum_hp"
  c.optax = dict()
  c.lr, c.wd = lr, 0.0
  c.schedule = dict(decay_type="cosine", warmup_steps=steps // 10)
  return c


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--root", default="workdirs/finetune_coarse")
  p.add_argument("--pretrain_steps", type=int, default=2400)
  p.add_argument("--finetune_steps", type=int, default=500)
  p.add_argument("--seqhw", type=int, default=5, help="the one fine-tuning grid")
  p.add_argument("--out", default=None, help="writes OUT.json and OUT.png")
  args = p.parse_args()
  q, runs = common.quiet, {}
  for name, flexi in (("flexivit", True), ("vit", False)):
    pre = os.path.abspath(os.path.join(args.root, f"{name}_pretrain"))
    runs[f"{name}_pretrain"] = common.train(q(pretrain_config(flexi, args.pretrain_steps)), pre)
    runs[f"{name}_finetuned"] = common.train(
        q(finetune_config(pre, args.seqhw, args.finetune_steps)),
        os.path.join(args.root, f"{name}_finetuned"))
  rows = [dict(seqhw=s, patch=common.IMAGE // s,
               **{k: common.test_acc(v, s) for k, v in runs.items()}) for s in SEQHWS]
  pct = lambda v: "-" if v is None else f"{v:.1f}%"
  print(tables.format_rows(["seqhw", "patch"] + list(runs),
                           [[r["seqhw"], r["patch"]] + [pct(r[k]) for k in runs] for r in rows]))
  print("wall s: " + "  ".join(f"{k} {v['wall_s']}" for k, v in runs.items()))
  if args.out:
    common.write_json(args.out + ".json", dict(rows=rows, seed=0, finetune_seqhw=args.seqhw,
                                               wall_s={k: v["wall_s"] for k, v in runs.items()}))
    lines = {f"{k} (fine-tuned at seqhw {args.seqhw})": ([r["patch"] for r in rows],
                                                         [r[k] for r in rows])
             for k in ("flexivit_finetuned", "vit_finetuned")}
    print("plot:", plots.plot_lines(lines, args.out + ".png", xlabel="patch size (px)",
                                    ylabel="test prec@1 on digits 5-9 (%)", invert_x=True,
                                    title="fine-tune coarse, deploy fine"))


if __name__ == "__main__":
  main()
