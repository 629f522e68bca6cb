"""Does resolution matter on `cluttered_digits`? Plain ViTs at fixed patch sizes, equal steps.

For each patch size, trains a plain ViT (the digits demo's model: width 64, depth
4, 4 heads, token pooling; kernel and position embedding stored at that patch's
size, so nothing is resized) on `cluttered_digits` train at 64 px with the
digits demo's optimiser and the same number of steps, and reports test accuracy
and training wall time. The benchmark is meant to show accuracy rising from the
coarsest to the finest patch.

  python benchmarks/cluttered_patch_sweep.py [--patches 16,8,4] [--steps 600]
      [--batch 64] [--out sweep.json] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexivit_jax import xla_env  # noqa: E402
xla_env.apply_cpu_defaults()  # The train CLI's XLA:CPU flags: runs here train as `train` does.
from flexivit_jax.data import cluttered_digits  # noqa: E402
from flexivit_jax.training import config as config_lib  # noqa: E402
from flexivit_jax.training import demos, loop  # noqa: E402

PP = ('decode|value_range(-1, 1)|onehot(10, key="label", key_result="labels")|'
      'keep("image", "labels")')


def patch_config(patch: int, steps: int, batch: int):
  """The digits demo's baseline config on cluttered_digits, a plain ViT at one patch size."""
  grid = cluttered_digits.CANVAS // patch
  c = demos.digits_config(f"baseline,steps={steps}")
  c.model.update(patch_size=(patch, patch), posemb_size=(grid, grid))
  c.input.data = dict(name="cluttered_digits", split="train")
  c.input.pp = PP
  c.input.batch_size = batch
  c.flexi = dict(seqhw=dict(v=(grid,), p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=(grid,)))
  c.evals.test.data = dict(name="cluttered_digits", split="test")
  c.evals.test.pp = PP
  c.schedule.warmup_steps = min(c.schedule.warmup_steps, steps // 5)
  c.log_eval_steps = steps
  c.ckpt_steps = steps
  c.progress = "lines"
  return config_lib.complete(c)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--patches", default="16,8,4")
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--out", default=None, help="write the results as JSON here")
  p.add_argument("--workdir", default=None, help="runs go under here (default: a temp dir)")
  args = p.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="cluttered_sweep_")
  results = []
  for patch in (int(v) for v in args.patches.split(",")):
    start = time.time()
    last = loop.train_and_evaluate(patch_config(patch, args.steps, args.batch),
                                   os.path.join(root, f"patch{patch}"))
    acc = {k: float(v) for k, v in last.items() if "accuracy" in k or "prec@1" in k}
    results.append(dict(patch=patch, steps=args.steps, batch=args.batch,
                        wall_s=round(time.time() - start, 1), **acc))
    print(json.dumps(results[-1]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
