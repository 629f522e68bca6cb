"""Compile time of all train steps: cold vs warm persistent compilation cache.

Two fresh subprocesses share one empty `jax_compilation_cache_dir` (min compile
time 0, so every executable is stored): the first compiles the train step of each
seqhw cold and fills the cache, the second compiles them again and reads it.
Prints each run's trace+lower and compile seconds, the warm/cold ratio (target
<= 10%) and a matmul check.

  python benchmarks/compile.py [--variant S] [--seqhw 5,6,8,...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common

CHILD = """
import json, sys, time
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
import numpy as np
import train_step
from flexivit_jax.model import FlexiViT
model = FlexiViT(num_classes=1000, variant=sys.argv[2], patch_size=(32, 32))
images = np.zeros((4, 240, 240, 3), np.float32)
labels = np.zeros((4,), np.int32)
params = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], patch_size=16)["params"])
lower = compile = 0.0
for s in sys.argv[3].split(","):
  start = time.perf_counter()
  lowered = train_step.lowered_step(model, params, images, labels, 240 // int(s))
  lower += time.perf_counter() - start
  start = time.perf_counter()
  lowered.compile()
  compile += time.perf_counter() - start
print(json.dumps({"lower": lower, "compile": compile}))
"""


def run_child(cache_dir: str, variant: str, seqhw: str) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")])}
  out = subprocess.run([sys.executable, "-c", CHILD, cache_dir, variant, seqhw], env=env,
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="S")
  parser.add_argument("--seqhw", default="5,6,8,10,12,15,16,20,24,30")
  args = parser.parse_args()
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s")
  with tempfile.TemporaryDirectory() as cache_dir:
    start = time.perf_counter()
    cold = run_child(cache_dir, args.variant, args.seqhw)
    warm = run_child(cache_dir, args.variant, args.seqhw)
    wall = time.perf_counter() - start
  n = len(args.seqhw.split(","))
  total = {k: r["lower"] + r["compile"] for k, r in (("cold", cold), ("warm", warm))}
  print(f"{args.variant}, {n} train steps (seqhw {args.seqhw}), seconds:")
  print(f"{'':>5} {'trace+lower':>11} {'compile':>8} {'total':>7}")
  for name, r in (("cold", cold), ("warm", warm)):
    print(f"{name:>5} {r['lower']:>11.1f} {r['compile']:>8.1f} {total[name]:>7.1f}")
  print(f"warm/cold total {total['warm'] / total['cold']:.1%} (target <= 10%), compile "
        f"alone {warm['compile'] / cold['compile']:.1%}; wall incl. process starts {wall:.0f} s")
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (after)")


if __name__ == "__main__":
  main()
