"""Compile time of the trainer's train steps: cold vs warm (persistent caches).

The steps are the trainer's own (`compiled_steps.CompiledSteps` over
`compiled_steps.make_train_step`: AdamW-style optimizer, grad clipping, mixup off,
FlexiViT-S at 240 px, batch 4), one per seqhw, each run in a fresh subprocess
with `config.compile_cache_dir` set, as a restarted training job would:

  cold       empty cache directory: trace, export, compile, fill both caches
  warm       the cache the cold run filled: the traced step is read back
             (flexivit_jax.training.step_cache) and XLA's persistent cache supplies the
             executable

With `--xla_only` two more runs show what JAX's persistent compilation cache
alone gives (the trainer before the step cache: every restart traces again).
Prints seconds per run, warm/cold (target <= 10%) and a matmul check.

  python benchmarks/compile.py [--variant S] [--seqhw 5,6,8,...] [--xla_only]
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
from flexivit_jax import cli
from flexivit_jax.outputs import console

CHILD = """
import json, sys, time
start = time.perf_counter()
from flexivit_jax import xla_env
xla_env.apply_cpu_defaults()  # As the train CLI does.
import jax
import jax.numpy as jnp
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import optim
from flexivit_jax.training import compiled_steps
from flexivit_jax.models import vit
from flexivit_jax.training import initial_state
from flexivit_jax.training import sharding
from jax.sharding import NamedSharding, PartitionSpec as P
cache_dir, variant, seqhws, use_step_cache = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
c = config_lib.default_config()
c.model = dict(variant=variant, num_classes=1000, patch_size=(32, 32), posemb_size=(7, 7))
c.flexi = dict(seqhw=dict(v=tuple(int(s) for s in seqhws.split(","))))
c.compile_cache_dir = cache_dir
c.total_steps = 1000
jax.config.update("jax_compilation_cache_dir", cache_dir)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
model = vit.from_config(c.model)
tx, _ = optim.make_optimizer(c, c.total_steps)
mesh = sharding.make_mesh(c.mesh)
repl = NamedSharding(mesh, P())
sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=repl)
params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 240, 240, 3)),
                                           seqhw=7)["params"])
state = jax.tree.map(lambda a: sds(a.shape, a.dtype),
                     jax.eval_shape(lambda p: initial_state.state_from_params(tx, p), params))
batch = {"image": sds((4, 240, 240, 3), jnp.float32), "labels": sds((4, 1000), jnp.float32)}
steps = compiled_steps.CompiledSteps(
    compiled_steps.make_train_step(model, tx, compiled_steps.make_loss_fn(c), (), seed=0, mixup_p=0.0),
    (repl, repl), donate=True, cache=compiled_steps.make_step_cache(c) if use_step_cache else None,
    name="train")
setup = time.perf_counter() - start
start = time.perf_counter()
for s in seqhws.split(","):
  steps.compile(initial_state.flexi_key({"seqhw": int(s)}), state, {}, batch)
print(json.dumps({"steps": time.perf_counter() - start, "setup": setup}))
"""


def run_child(cache_dir: str, variant: str, seqhw: str, step_cache: bool) -> dict:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
       os.environ.get("PYTHONPATH", "")])}
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-c", CHILD, cache_dir, variant, seqhw,
                        "1" if step_cache else "0"], env=env, check=True,
                       capture_output=True, text=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  result["process"] = time.perf_counter() - start
  return result


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="S")
  parser.add_argument("--seqhw", default="5,6,8,10,12,15,16,20,24,30")
  parser.add_argument("--xla_only", action="store_true",
                      help="also time JAX's persistent compilation cache alone")
  cli.add_progress_argument(parser)
  args = parser.parse_args()
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s", flush=True)
  runs = {}
  modes = [("step cache + XLA cache", True)] + ([("XLA cache only", False)] if args.xla_only
                                                 else [])
  progress = console.Progress(2 * len(modes), mode=args.progress, unit="run")
  for label, step_cache in modes:
    with tempfile.TemporaryDirectory() as cache_dir:
      runs[label] = []
      for start in ("cold", "warm"):
        runs[label].append(run_child(cache_dir, args.variant, args.seqhw, step_cache))
        progress.update(1)
        progress.log({"caches": label, "start": start,
                      "seconds": round(runs[label][-1]["process"], 1)})
  progress.close()
  n = len(args.seqhw.split(","))
  print(f"{args.variant}, {n} train steps (seqhw {args.seqhw}), seconds:")
  print(f"{'caches':<24} {'cold steps':>10} {'warm steps':>10} {'warm/cold':>9} "
        f"{'cold process':>12} {'warm process':>12}")
  for label, (cold, warm) in runs.items():
    print(f"{label:<24} {cold['steps']:>10.1f} {warm['steps']:>10.1f} "
          f"{warm['steps'] / cold['steps']:>9.1%} {cold['process']:>12.1f} "
          f"{warm['process']:>12.1f}")
  print("target: warm <= 10% of cold (the steps' trace + lower + compile; 'process' adds "
        "the interpreter, imports and model set-up)")
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (after)")


if __name__ == "__main__":
  main()
