"""Train-step cost of flexibility, MFU and peak memory, at each seqhw, Ti and S.

For each variant and token grid (seqhw), two jitted train steps (softmax cross
entropy, grads, SGD update) at 240 px: the FlexiViT as trained (32x32 kernel and
7x7 posemb stored, PI-resized inside the step) and the same model written with a
fixed patch (kernel and posemb stored at that size: no resize in the graph). The
two alternate in sweeps in one process. Prints flexi/fixed speed (the cost of
flexibility, target >= 0.95x), the flexi step's FLOPs over the fixed one's (the
same cost, exact: XLA's count), MFU = compiled FLOPs (XLA cost analysis) per
second over the measured matmul peak (target >= 50% for S at seqhw >= 15), and
the step's memory from XLA's buffer assignment (arguments + outputs + temps;
host memory here: no GPU is lent to this benchmark), plus the process peak RSS.

Steps are all compiled first, then timed in sweeps over the whole table (two
sweeps, a third while the run stays within --budget_s; each step's best). One
variant per run by default: XLA compiles a step in ~4 s here whatever its size,
and 40 compiles plus two sweeps came to 277-299 s, too close to 5 minutes.

  python benchmarks/train_step.py                 # S, ~2.5 min here
  python benchmarks/train_step.py --variants Ti   # Ti
  python benchmarks/train_step.py [--variants Ti,S] [--seqhw 5,15,30] [--batch 4]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import resource
import time

import jax
import numpy as np
import optax

import common
from flexivit_jax import cli
from flexivit_jax.outputs import console
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.evaluators import flops
from flexivit_jax.evaluators.predict import params_at_size

IMAGE = 240
SEQHWS = tuple(IMAGE // p for p in common.FLEXI_PATCHES)


def lowered_step(model: FlexiViT, params, images, labels, patch: int):
  """The jitted train step at one patch size, traced and lowered."""
  def step(p, x, y):
    def loss(p):
      logits, _ = model.apply({"params": p}, x, patch_size=patch, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    value, grads = jax.value_and_grad(loss)(p)
    return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grads), value
  return jax.jit(step).lower(params, images, labels)


def step_bytes(compiled) -> float:
  mem = compiled.memory_analysis()
  if mem is None:
    return float("nan")
  return float(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def compile_all(args, images, labels, progress: console.Progress) -> dict:
  """Every (variant, seqhw, flexi|fixed) step compiled, with the params it takes.

  Traced here, compiled two at a time (XLA's compile releases the GIL), and all
  finished before anything is timed: a compile beside a timed step would steal
  one of the two cores from it.
  """
  jobs = {}
  with concurrent.futures.ThreadPoolExecutor(common.cpu_threads()) as pool:
    for variant in args.variants.split(","):
      model = FlexiViT(num_classes=1000, variant=variant, patch_size=(32, 32))
      params = jax.jit(lambda: model.init(jax.random.key(0), images[:1],
                                          patch_size=16)["params"])()
      for seqhw in (int(s) for s in args.seqhw.split(",")):
        patch = IMAGE // seqhw
        fixed_model, fixed_params = params_at_size(model, params, (patch, patch),
                                                   (seqhw, seqhw))
        for name, (m, p) in {"flexi": (model, params),
                             "fixed": (fixed_model, fixed_params)}.items():
          lowered = lowered_step(m, p, images, labels, patch)
          jobs[variant, seqhw, name] = (pool.submit(lowered.compile), p)
          jobs[variant, seqhw, name][0].add_done_callback(lambda _: progress.update(1))
  return {key: (job.result(), p) for key, (job, p) in jobs.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default="S")
  parser.add_argument("--seqhw", default=",".join(map(str, SEQHWS)))
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3, help="timed sweeps at most")
  parser.add_argument("--budget_s", type=float, default=285.0,
                      help="after two sweeps, no sweep starts that would end past this")
  cli.add_progress_argument(parser)
  args = parser.parse_args()
  start = time.perf_counter()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(args.batch, IMAGE, IMAGE, 3)).astype(np.float32)
  labels = rng.integers(0, 1000, size=(args.batch,)).astype(np.int32)
  peak = common.peak_gflops()
  print(f"threads: {common.cpu_threads()}; XLA_FLAGS: {common.xla_flags()}; MFU's peak (best "
        f"of JAX and numpy 2048^2 matmul): {peak:.1f} GFLOP/s", flush=True)
  num_steps = 2 * len(args.variants.split(",")) * len(args.seqhw.split(","))
  compiling = console.Progress(num_steps, mode=args.progress, unit="compiled", every_s=30.0)
  steps = compile_all(args, images, labels, compiling)
  compiling.close()
  print(f"compiled {len(steps)} steps in {time.perf_counter() - start:.0f} s", flush=True)
  # Sweeps over the whole table, flexi and fixed back to back in each row, so a drift
  # of this VM's speed lands on every row and on both sides of each ratio alike. Each
  # step's time is its best over the sweeps: interference here only ever slows a
  # call down, and the best also drops the first call's allocations (no warm-up
  # sweep: after the compiles, a 5-minute run has room for two or three sweeps).
  times = {key: [] for key in steps}
  rows = [(variant, seqhw) for variant, seqhw, name in steps if name == "flexi"]
  sweep = 0.0
  sweeps = console.Progress(args.rounds, mode=args.progress, unit="sweep")
  for r in range(args.rounds):
    if r >= 2 and time.perf_counter() - start + sweep > args.budget_s:
      break
    began = time.perf_counter()
    # Odd sweeps run backwards (small -> large -> small ...): a call that follows a
    # much larger step pays for the memory that step gave back (page faults), and
    # the first call of a row pays most, so the order within a row swaps too.
    order = 1 if r % 2 == 0 else -1
    for row in rows[::order]:
      for name in ("flexi", "fixed")[::order]:
        fn, p = steps[(*row, name)]
        times[(*row, name)].append(common.timed(lambda: fn(p, images, labels)))
    sweep = time.perf_counter() - began
    sweeps.update(1)
    sweeps.log({"seconds": round(sweep, 1)})
  sweeps.close()
  print(f"timed sweeps: {len(next(iter(times.values())))} (best of them per step)")
  print(f"{'model':>5} {'seqhw':>5} {'flexi ms':>9} {'fixed ms':>9} {'flexi/fixed':>11} "
        f"{'GFLOP':>7} {'FLOPs-fixed':>11} {'MFU':>6} {'step MiB':>9}")
  for variant, seqhw in rows:
    flexi, fixed = (min(times[variant, seqhw, name]) for name in ("flexi", "fixed"))
    compiled = steps[variant, seqhw, "flexi"][0]
    gflop = flops.gflops(compiled)
    # The cost of flexibility in FLOPs, exact (XLA's count), free of this VM's noise.
    extra = gflop / flops.gflops(steps[variant, seqhw, "fixed"][0]) - 1
    mfu = gflop / flexi / peak
    print(f"{variant:>5} {seqhw:>5} {flexi * 1e3:>9.0f} {fixed * 1e3:>9.0f} "
          f"{fixed / flexi:>10.2f}x {gflop:>7.1f} {extra:>+11.2%} {mfu:>6.1%} "
          f"{step_bytes(compiled) / 2**20:>9.0f}")
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"process peak RSS: {rss:.0f} MiB; matmul check: {common.matmul_gflops():.1f} "
        f"GFLOP/s (after); wall {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
