"""Self-attention layouts side by side (one ViT block's attention, forward).

Compares, with the same parameters: flax's `nn.MultiHeadDotProductAttention`, the
package's `SelfAttention` (fused QKV, heads-major, query-blocked) at several
query-block sizes, and the same with `jax.nn.dot_product_attention`. Alternated
over rounds, medians, with a matmul check; ratios are against flax.

  python benchmarks/attention.py [--tokens 577] [--batch 8] [--rounds 5]
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common

from flexivit_jax.models import layers


def xla_attention(q, k, v, block=None):
  del block  # (n, h, l, dh) -> the (n, l, h, dh) layout jax.nn expects; q pre-scaled.
  t = lambda a: jnp.transpose(a, (0, 2, 1, 3))
  return t(jax.nn.dot_product_attention(t(q), t(k), t(v), scale=1.0))


def variants(width: int, heads: int):
  flax_mha = nn.MultiHeadDotProductAttention(num_heads=heads)
  ours = layers.SelfAttention(heads)
  out = {"flax": lambda p, x: flax_mha.apply(p, x, x)}
  for block in (None, 96, 160, 289):
    def fn(p, x, block=block):
      with mock.patch.object(layers, "QUERY_BLOCK", block or 10**9):
        return ours.apply(p, x)
    out[f"ours/block={block or 'none'}"] = fn
  def xla(p, x):
    with mock.patch.object(layers, "blocked_attention", xla_attention):
      return ours.apply(p, x)
  out["ours/jax.nn.dpa"] = xla
  return flax_mha, out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tokens", type=int, default=577)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--width", type=int, default=384)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  x = jax.random.normal(jax.random.key(0), (args.batch, args.tokens, args.width))
  flax_mha, fns = variants(args.width, args.heads)
  params = flax_mha.init(jax.random.key(1), x, x)
  jitted = {name: jax.jit(fn) for name, fn in fns.items()}
  ref = jitted["flax"](params, x)
  errs = {n: float(jnp.abs(f(params, x) - ref).max()) for n, f in jitted.items()}
  times = {n: [] for n in jitted}
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (jax, 2048^2)")
  for _ in range(args.rounds):
    for name, f in jitted.items():
      start = time.perf_counter()
      jax.block_until_ready(f(params, x))
      times[name].append(time.perf_counter() - start)
  base = np.median(times["flax"])
  print(f"attention ({args.batch}, {args.tokens}, {args.heads} heads, width {args.width})")
  print(f"{'variant':<20} {'ms':>8} {'vs flax':>8} {'max|diff|':>10}")
  for name in jitted:
    t = np.median(times[name])
    print(f"{name:<20} {t * 1e3:>8.1f} {base / t:>7.2f}x {errs[name]:>10.1e}")
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (after)")


if __name__ == "__main__":
  main()
