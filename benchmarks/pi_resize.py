"""PI-resize: our separable form against the reference formulation, side by side.

The reference builds the (q*q, p*p) resize matrix B from p*p one-hot basis
patches and takes a dense pinv of B^T at every trace. Ours takes two 1-D pinvs
(B = kron(Bh, Bw)). This prints, for a 32x32x3x768 kernel and each flexi patch
size: max abs difference, time of each (jitted, after the first call, the two
alternated over several rounds, medians) and the ratio, the total over all sizes,
the first-call (trace + compile) time separately, and a matmul GFLOP/s figure
from the same run (this VM's speed swings).

  python benchmarks/pi_resize.py [--sizes 8,16,48] [--rounds 5]
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

import common
from flexivit_jax import pi_resize


@functools.partial(jax.jit, static_argnames="new")
def dense_reference_pi_resize(kernel, new: int):
  """The reference formulation: dense B from one-hot basis resizes, dense pinv."""
  p = kernel.shape[0]
  basis = jnp.eye(p * p, dtype=jnp.float32).reshape(p * p, p, p)
  resized = jax.image.resize(basis, (p * p, new, new), "linear", antialias=False)
  mat = resized.reshape(p * p, new * new).T  # (q*q, p*p)
  flat = kernel.reshape(p * p, -1)
  return (jnp.linalg.pinv(mat.T) @ flat).reshape(new, new, *kernel.shape[2:])


def float64_dense_pi_resize(kernel, new: int) -> np.ndarray:
  """The dense formulation in float64 numpy: the accuracy yardstick for both."""
  p = kernel.shape[0]
  basis = jnp.eye(p * p, dtype=jnp.float32).reshape(p * p, p, p)
  mat = np.asarray(jax.image.resize(basis, (p * p, new, new), "linear", antialias=False),
                   np.float64).reshape(p * p, new * new).T
  flat = np.asarray(kernel, np.float64).reshape(p * p, -1)
  return (np.linalg.pinv(mat.T) @ flat).reshape(new, new, *kernel.shape[2:])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="8,10,12,15,16,20,24,30,40,48")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  kernel = jax.random.normal(jax.random.key(0), (32, 32, 3, 768))
  impls = {"ours": pi_resize, "dense": dense_reference_pi_resize}
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (jax, 2048^2)")
  first = {name: {q: common.timed(lambda: fn(kernel, q)) for q in sizes}
           for name, fn in impls.items()}
  per = {name: {q: [] for q in sizes} for name in impls}
  for _ in range(args.rounds):  # Alternate the two within each round.
    for q in sizes:
      for name, fn in impls.items():
        per[name][q].append(common.timed(lambda: fn(kernel, q)))
  print("max|err| against the dense formulation in float64, for ours and the float32 dense")
  print(f"{'patch':>5} {'ours err':>9} {'dense err':>9} {'ours ms':>9} {'dense ms':>9} "
        f"{'speed-up':>9}")
  worst = 0.0
  for q in sizes:
    truth = float64_dense_pi_resize(kernel, q)
    err, ref_err = (float(np.abs(np.asarray(fn(kernel, q), np.float64) - truth).max())
                    for fn in impls.values())
    worst = max(worst, err)
    ours, ref = (float(np.median(per[n][q])) for n in impls)
    print(f"{q:>5} {err:>9.2e} {ref_err:>9.2e} {ours * 1e3:>9.2f} {ref * 1e3:>9.2f} "
          f"{ref / ours:>8.1f}x")
  # Total per round, median over rounds: the figure the target is about.
  tot = {n: float(np.median([sum(per[n][q][r] for q in sizes) for r in range(args.rounds)]))
         for n in impls}
  print(f"{'all':>5} {worst:>9.2e} {'':>9} {tot['ours'] * 1e3:>9.2f} "
        f"{tot['dense'] * 1e3:>9.2f} {tot['dense'] / tot['ours']:>8.1f}x   "
        "(targets: >= 100x, ours err <= 1e-5)")
  print(f"first call (trace + compile + run), all sizes: ours "
        f"{sum(first['ours'].values()) * 1e3:.0f} ms, dense "
        f"{sum(first['dense'].values()) * 1e3:.0f} ms")
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (after)")


if __name__ == "__main__":
  main()
