"""Training in bfloat16 vs float32 on a bundled demo: accuracy per patch size (issue: numerics).

Trains the same demo config twice, seed for seed, once with `model.dtype_mm=float32`
and once with `bfloat16` (matmuls and activations in bf16; params, LayerNorm
statistics, softmax, logits and the PI-resize stay float32), then prints the final
test accuracy of both at every eval patch size and their difference. Runs are
kept under --root and reused when they finished (result.json), like the other
cluttered_digits experiments.

  python benchmarks/precision_demo.py [--demo digits|cluttered] [--steps N] [--seed 0]
      [--root workdirs/precision_demo] [--out docs/figures/precision_demo_seed0.json]
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Mapping

import cluttered_runs as runs  # benchmarks/cluttered_runs.py; puts the repo on sys.path.
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import demos

DTYPES = ("float32", "bfloat16")
DEMOS = {"digits": (demos.digits_config, 48), "cluttered": (demos.cluttered_config, 64)}


def demo_config(demo: str, dtype: str, steps: int, seed: int):
  """The demo's FlexiViT with matmuls in `dtype`; nothing else differs between the two."""
  builder, _ = DEMOS[demo]
  c = runs.quiet(builder(f"steps={steps}"))
  c.seed = seed
  c.model.dtype_mm = dtype
  return c


def table(results: Mapping[str, Mapping], demo: str, seqhws) -> List[Dict]:
  """Rows of (patch, seqhw, accuracy per dtype, bf16 - f32 in points)."""
  _, image = DEMOS[demo]
  rows = []
  for s in seqhws:
    acc = {d: runs.test_acc(results[d], s) for d in DTYPES}
    rows.append(dict(patch=image // s, seqhw=s, **acc, delta=acc["bfloat16"] - acc["float32"]))
  return rows


def markdown(rows: List[Dict]) -> str:
  lines = ["| patch | seqhw | float32 | bfloat16 | bf16 - f32 (points) |", "|---:|---:|---:|---:|---:|"]
  lines += [f"| {r['patch']} | {r['seqhw']} | {r['float32']:.1f} | {r['bfloat16']:.1f} | "
            f"{r['delta']:+.1f} |" for r in rows]
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--demo", choices=sorted(DEMOS), default="digits")
  p.add_argument("--steps", type=int, default=1200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--root", default="workdirs/precision_demo")
  p.add_argument("--out", default=None, help="default: docs/figures/precision_demo_seedN.json")
  args = p.parse_args(argv)
  results = {}
  for dtype in DTYPES:
    config = demo_config(args.demo, dtype, args.steps, args.seed)
    run_dir = os.path.join(args.root, f"{args.demo}_{dtype}_seed{args.seed}")
    results[dtype] = runs.train(config, run_dir)
    print(f"{dtype}: {results[dtype]['wall_s']:.0f} s", flush=True)
  seqhws = config_lib.complete(config).eval_flexi["seqhw"]["v"]
  rows = table(results, args.demo, seqhws)
  worst = max(abs(r["delta"]) for r in rows)
  out = args.out or f"docs/figures/precision_demo_seed{args.seed}.json"
  runs.write_json(out, dict(demo=args.demo, steps=args.steps, seed=args.seed, rows=rows,
                                 wall_s={d: results[d]["wall_s"] for d in DTYPES},
                                 max_abs_delta_points=worst))
  print(markdown(rows))
  print(f"largest |bf16 - f32|: {worst:.1f} points")


if __name__ == "__main__":
  main()
