"""The transformer's layers, named and shaped as big_vision's ViT so its npz loads as is.

Attention is query-blocked (`QUERY_BLOCK` rows at a time) to bound its memory at fine grids.

Precision: every layer takes `dtype`, the dtype of its matmuls and of the activations it
returns (big_vision's `dtype_mm`); its params are created and stored in float32 and cast
to `dtype` where they are used. LayerNorm statistics and the attention softmax are
computed in float32 whatever `dtype` is.

Memory and compile time: `Encoder` can wrap each block in `nn.remat` with a
`jax.checkpoint_policies` policy (`remat_policy`, see `checkpoint_policy`) and run the
blocks under `nn.scan` (`scan`: one block traced once, its params stacked along a leading
axis of length `depth` under the name `encoderblock`; the per-block layout
`encoderblock_{i}` is what checkpoints store, converted by `flexivit_jax.checkpoints.layout`).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError

Array = jax.Array


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.,
                     dtype=jnp.float32) -> Array:
  """Fixed 2-D sin-cos position embedding (1, h*w, width) (MoCo v3 style)."""
  if width % 4:
    raise UserError(f"width must be a multiple of 4 for sincos2d posemb, got {width}")
  y, x = jnp.mgrid[:h, :w]
  omega = jnp.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature**omega)
  y = jnp.einsum("m,d->md", y.flatten(), omega)
  x = jnp.einsum("m,d->md", x.flatten(), omega)
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None, :, :]


# "none" disables remat; the others are the members of `jax.checkpoint_policies` that are
# policies themselves (not factories such as `save_only_these_names`, which need names).
REMAT_NONE = "none"


def remat_policy_names() -> Tuple[str, ...]:
  """The allowed `remat_policy` values: "none" and every ready-made jax checkpoint policy.

  A policy is called as `policy(prim, *args, **params)`; the factories of
  `jax.checkpoint_policies` take names or other policies and accept no `**params`,
  which is how they are told apart (so a policy added by a later jax is allowed too).
  """
  names = []
  for name in dir(jax.checkpoint_policies):
    fn = getattr(jax.checkpoint_policies, name)
    if name.startswith("_") or not callable(fn):
      continue
    try:
      kinds = [p.kind for p in inspect.signature(fn).parameters.values()]
    except (TypeError, ValueError):
      continue
    if inspect.Parameter.VAR_KEYWORD in kinds:
      names.append(name)
  return (REMAT_NONE, *sorted(names))


def checkpoint_policy(name: str):
  """The `jax.checkpoint_policies` member named `name`; None for "none" (no remat)."""
  allowed = remat_policy_names()
  if name not in allowed:
    raise UserError(f"unknown remat_policy {name!r}; allowed: {', '.join(allowed)}")
  return None if name == REMAT_NONE else getattr(jax.checkpoint_policies, name)


class MlpBlock(nn.Module):
  """Transformer MLP: Dense -> gelu (tanh approx.) -> dropout -> Dense, in `dtype`."""
  mlp_dim: Optional[int] = None  # Defaults to 4x input dim.
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6),
                 dtype=self.dtype, param_dtype=jnp.float32)
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim or 4 * d, **inits)(x)
    x = nn.gelu(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return nn.Dense(d, **inits)(x)


class _ProjParams(nn.Module):
  """Holds one projection's `kernel`/`bias` under flax DenseGeneral's names.

  Initialised as DenseGeneral does (flat (fan_in, fan_out), then reshaped) so the
  parameters are those of `nn.MultiHeadDotProductAttention`; the attention below
  does its own (fused) arithmetic with them.
  """
  kernel_shape: Tuple[int, ...]
  fan_in_dims: int
  bias_shape: Tuple[int, ...]
  kernel_init: Any = nn.initializers.xavier_uniform()

  @nn.compact
  def __call__(self) -> Tuple[Array, Array]:
    def init(key, shape, dtype=jnp.float32):
      flat = (int(np.prod(shape[:self.fan_in_dims])), int(np.prod(shape[self.fan_in_dims:])))
      return jnp.reshape(self.kernel_init(key, flat, dtype), shape)
    return (self.param("kernel", init, self.kernel_shape, jnp.float32),
            self.param("bias", nn.initializers.zeros, self.bias_shape, jnp.float32))


# Queries per block of the blocked attention: keeps a (heads, block, tokens) slab of
# logits in cache instead of the whole (heads, tokens, tokens) (SPEC 8).
QUERY_BLOCK = 160


def _attend(q: Array, k: Array, v: Array) -> Array:
  """softmax(q k^T) v, heads-major (n, h, l, dh); q already scaled."""
  logits = jnp.einsum("nhqd,nhkd->nhqk", q, k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("nhqk,nhkd->nhqd", weights, v)


def blocked_attention(q: Array, k: Array, v: Array, block: int = QUERY_BLOCK) -> Array:
  """`_attend` over blocks of queries (lax.map); same result, better cache use."""
  lq = q.shape[2]
  nblk = -(-lq // block)
  if nblk <= 1:
    return _attend(q, k, v)
  size = -(-lq // nblk)  # Even blocks; the last one padded with zero queries.
  pad = nblk * size - lq
  qb = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
  qb = jnp.moveaxis(qb.reshape(*q.shape[:2], nblk, size, q.shape[3]), 2, 0)
  out = jax.lax.map(lambda qi: _attend(qi, k, v), qb)
  out = jnp.moveaxis(out, 0, 2).reshape(*q.shape[:2], nblk * size, q.shape[3])
  return out[:, :, :lq]


class SelfAttention(nn.Module):
  """Multi-head self-attention with the parameters of `nn.MultiHeadDotProductAttention`.

  Same names and shapes (`query|key|value/kernel (D, H, D/H)`, `out/kernel
  (H, D/H, D)`), so checkpoints interoperate; the arithmetic differs: one fused
  QKV matmul, heads-major layout and query-blocked attention, which ran ~2x
  faster than the flax module on CPU (benchmarks/attention.py). The matmuls run in
  the dtype of `x` (the float32 kernels are cast to it); the softmax in float32.
  """
  num_heads: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, l, d = x.shape
    h = self.num_heads
    dh = d // h
    qkv = [_ProjParams((d, h, dh), 1, (h, dh), name=name)() for name in ("query", "key", "value")]
    out_k, out_b = _ProjParams((h, dh, d), 2, (d,), name="out")()
    kernel = jnp.stack([k for k, _ in qkv], axis=1).reshape(d, 3 * d).astype(x.dtype)
    bias = jnp.stack([b for _, b in qkv]).reshape(3 * d).astype(x.dtype)
    y = (x.reshape(n * l, d) @ kernel + bias).reshape(n, l, 3, h, dh)
    y = jnp.transpose(y, (2, 0, 3, 1, 4))  # (3, n, h, l, dh): heads-major.
    q, k, v = y[0] * jnp.asarray(dh**-0.5, x.dtype), y[1], y[2]
    o = blocked_attention(q, k, v)
    o = jnp.transpose(o, (0, 2, 1, 3)).reshape(n * l, d)
    return (o @ out_k.reshape(d, d).astype(x.dtype) + out_b.astype(x.dtype)).reshape(n, l, d)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x)), activations in `dtype`.

  `x` is cast to `dtype` on entry, so the residual stream stays in `dtype`.
  """
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Tuple[Array, dict]:
    out = {}
    x = x.astype(self.dtype)
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
    y = out["sa"] = SelfAttention(self.num_heads, name="MultiHeadDotProductAttention_0")(y)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = out["+sa"] = x + y
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
    y = out["mlp"] = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                              dtype=self.dtype)(y, deterministic)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    x = out["+mlp"] = x + y
    return x, out


class Encoder(nn.Module):
  """Stack of `depth` blocks followed by `encoder_norm`.

  The blocks are `encoderblock_{i}`, or with `scan` one `encoderblock` whose params
  carry a leading axis of length `depth` (the same math: `scan` changes how the program
  is traced and compiled, not what it computes). `remat_policy` (a name of
  `remat_policy_names()`) recomputes each block's activations in the backward pass
  instead of storing them, keeping what the policy saves. Intermediates are
  `block{i:02d}` either way.
  """
  depth: int
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  dtype: Any = jnp.float32
  remat_policy: str = REMAT_NONE
  scan: bool = False

  def _block_class(self):
    policy = checkpoint_policy(self.remat_policy)
    if self.remat_policy == REMAT_NONE:
      return Encoder1DBlock
    # deterministic (argument 2, counting the module) selects dropout: static, not traced.
    # Under scan the loop itself keeps XLA from merging the recomputation away.
    return nn.remat(Encoder1DBlock, prevent_cse=not self.scan, static_argnums=(2,),
                    policy=policy)

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Tuple[Array, dict]:
    out = {}
    block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dropout=self.dropout,
                    dtype=self.dtype)
    block_cls = self._block_class()
    x = x.astype(self.dtype)  # The scan carry keeps one dtype from the first block on.
    if self.scan:
      scanned = nn.scan(block_cls, variable_axes={"params": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=nn.broadcast, length=self.depth)
      x, stacked = scanned(name="encoderblock", **block_kw)(x, deterministic)
      for lyr in range(self.depth):
        out[f"block{lyr:02d}"] = jax.tree.map(lambda a, i=lyr: a[i], stacked)
    else:
      for lyr in range(self.depth):
        block = block_cls(name=f"encoderblock_{lyr}", **block_kw)
        x, out[f"block{lyr:02d}"] = block(x, deterministic)
    out["pre_ln"] = x
    return nn.LayerNorm(name="encoder_norm", dtype=self.dtype, param_dtype=jnp.float32)(x), out


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe attends over the tokens."""
  mlp_dim: Optional[int] = None
  num_heads: int = 12

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, _, d = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
    probe = jnp.tile(probe, [n, 1, 1]).astype(x.dtype)
    x = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform())(probe, x)
    y = nn.LayerNorm()(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim)(y)
    return x[:, 0]
