"""Resizing of the two size-dependent parameters of a FlexiViT.

* `pi_resize` / `resize_patch_embed`: the patch-embedding kernel, stored once
  (32x32 in the released checkpoints), is resized on the fly to the patch size of
  the current step. PI-resize picks the new kernel so that a token is unchanged
  when the patch and the kernel are upsampled together (paper, Sec. 3.4).
* `resample_posemb`: the learned position embedding, stored on a fixed grid (7x7),
  is resized to the token grid, either with the run-time rule of the model or
  with the load-time rule used when a checkpoint's grid differs from the model's.

Everything here is pure JAX/numpy; the resize semantics (bilinear, half-pixel
centres, no antialias) are those of `tf.image.resize(method="bilinear")`, the
resize of the input pipeline.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError

HW = Union[int, Sequence[int]]
RESIZE_METHODS = ("pi", "vanilla", "area", "norm")
POSEMB_RULES = ("runtime", "load")


def to_hw(size: HW, name: str = "size") -> Tuple[int, int]:
  """Normalises an int or a pair to a validated (h, w) tuple of positive ints."""
  if isinstance(size, (int, np.integer)):
    hw = (int(size), int(size))
  else:
    try:
      hw = tuple(int(s) for s in size)
    except TypeError:
      raise UserError(f"{name} must be an int or a pair of ints, got {size!r}") from None
  if len(hw) != 2 or min(hw) <= 0:
    raise UserError(f"{name} must be a positive int or a pair of positive ints, got {size!r}")
  return hw


def bilinear_resize_matrix(old: int, new: int) -> jax.Array:
  """Matrix M (new, old) of 1-D bilinear resize, half-pixel centres, no antialias.

  Column j is the resize of the j-th one-hot signal, so `M @ x` is the resize of x.
  """
  return jnp.asarray(_bilinear_matrix_np(old, new))


@functools.lru_cache(maxsize=None)
def _bilinear_matrix_np(old: int, new: int) -> np.ndarray:
  # Pure numpy, once per size pair: a constant in every traced graph, and no small
  # XLA programs compiled on a step's first trace (that was ~0.9 s per new size).
  # The weights of jax.image.resize("linear", antialias=False), the reference's B,
  # in its float32 arithmetic as XLA runs it (the scale's inverse taken in float64,
  # the normalisation as a product with the reciprocal): bit-identical for the
  # flexi sizes, within an ulp or two elsewhere. pinv amplifies differences in B:
  # exact float64 weights moved PI-resize 32->30 by 2e-5 from the reference.
  f32 = np.float32
  centres = (np.arange(new, dtype=f32) + f32(0.5)) * f32(old / new) - f32(0.5)
  dist = np.abs(centres[None, :] - np.arange(old, dtype=f32)[:, None])
  weights = np.maximum(f32(0.0), f32(1.0) - dist)  # (old, new), the triangle kernel
  out = np.ascontiguousarray((weights * (f32(1.0) / weights.sum(axis=0))).T)
  out.setflags(write=False)
  return out


@functools.lru_cache(maxsize=None)
def _pinv_transpose_np(old: int, new: int) -> np.ndarray:
  """pinv(M^T), shape (new, old): the 1-D factor of PI-resize, cached per size pair.

  Taken in float64 on the host at trace time, so a jitted step carries a small
  constant instead of an SVD.
  """
  out = np.linalg.pinv(_bilinear_matrix_np(old, new).astype(np.float64).T)
  out.setflags(write=False)
  return out


def _separable_matmuls(x: jax.Array, mat_h: np.ndarray, mat_w: np.ndarray) -> jax.Array:
  """kron(mat_h, mat_w) applied to the (h, w) axes of a (h, w, C, D) array.

  Two plain matmuls whose large operand is contiguous in memory ((w, C, D), then
  (C, D) per output row): the three-operand einsum this replaces ran at a tenth
  of the matmul peak (SPEC 8).
  """
  hi = jax.lax.Precision.HIGHEST
  mat_h, mat_w = (np.asarray(m, x.dtype) for m in (mat_h, mat_w))
  # (i, p) x (p, w, C, D) -> (i, w, C, D): one matmul over the flattened (w, C, D).
  x = jax.lax.dot_general(mat_h, x, (((1,), (0,)), ((), ())), precision=hi)
  # Per output row i: (j, w) x (w, C, D) -> (i, j, C, D), a batched matmul.
  rows = np.broadcast_to(mat_w, (mat_h.shape[0], *mat_w.shape))
  return jax.lax.dot_general(rows, x, (((2,), (1,)), ((0,), (0,))), precision=hi)


def _separable_apply(kernel: jax.Array, mat_h: np.ndarray, mat_w: np.ndarray) -> jax.Array:
  """`_separable_matmuls` in float32 (float64 stays), differentiable in `kernel`.

  The map is linear, so its VJP is the same two matmuls with the transposed
  matrices: as fast as the forward, where autodiff's transpose of the batched
  matmul ran 2-4x slower (a train step's backward pays it every step).
  Reverse-mode only (custom_vjp), as training and the analyses need.
  """
  dtype = jnp.promote_types(kernel.dtype, jnp.float32)

  @jax.custom_vjp
  def apply(x):
    return _separable_matmuls(x, mat_h, mat_w)

  def apply_fwd(x):
    return apply(x), None

  def apply_bwd(_, g):
    return (_separable_matmuls(g, mat_h.T, mat_w.T),)

  apply.defvjp(apply_fwd, apply_bwd)
  return apply(kernel.astype(dtype)).astype(kernel.dtype)


def _check_kernel(kernel) -> None:
  if kernel.ndim != 4:
    raise UserError(
        f"patch-embedding kernel must be (ph, pw, C, D), got shape {tuple(kernel.shape)}")


@functools.partial(jax.jit, static_argnames=("new_hw",))
def _pi_resize(kernel: jax.Array, new_hw: Tuple[int, int]) -> jax.Array:
  # B = kron(Bh, Bw)  =>  pinv(B^T) = kron(pinv(Bh^T), pinv(Bw^T)): two small pinvs.
  return _separable_apply(kernel, *_kernel_factors(kernel.shape[:2], new_hw, "pi"))


def pi_resize(kernel: jax.Array, new_hw: HW) -> jax.Array:
  """PI-resizes a patch-embedding kernel (ph, pw, C, D) to (qh, qw, C, D).

  For every patch x: <x, kernel> == <resize(x), pi_resize(kernel)> when upsampling
  (exact), least squares when downsampling. Same size returns `kernel` itself.
  Jit-able and differentiable in `kernel`; `new_hw` must be static.
  """
  _check_kernel(kernel)
  new_hw = to_hw(new_hw, "new_hw")
  if tuple(kernel.shape[:2]) == new_hw:
    return kernel
  return _pi_resize(kernel, new_hw)


@functools.partial(jax.jit, static_argnames=("new_hw",))
def _vanilla_resize(kernel: jax.Array, new_hw: Tuple[int, int]) -> jax.Array:
  return _separable_apply(kernel, *_kernel_factors(kernel.shape[:2], new_hw, "vanilla"))


def resize_patch_embed(kernel: jax.Array, new_hw: HW, method: str = "pi") -> jax.Array:
  """Resizes a patch-embedding kernel with one of the methods of the paper's Fig. 3.

  `pi`: PI-resize; `vanilla`: bilinear resize of the kernel itself;
  `area`: vanilla, then scaled by (ph*pw)/(qh*qw) to keep the token's scale;
  `norm`: the kernel as vanilla; the model then rescales every token to a fixed
  norm (`FlexiViT.token_norm`, the mean token norm at the training size).
  """
  if method not in RESIZE_METHODS:
    raise UserError(f"unknown patch-embedding resize method {method!r}; "
                     f"allowed: {', '.join(RESIZE_METHODS)}")
  if method == "pi":
    return pi_resize(kernel, new_hw)
  _check_kernel(kernel)
  new_hw = to_hw(new_hw, "new_hw")
  if tuple(kernel.shape[:2]) == new_hw:
    return kernel
  out = _vanilla_resize(kernel, new_hw)
  if method == "area":
    ratio = (kernel.shape[0] * kernel.shape[1]) / (new_hw[0] * new_hw[1])
    out = out * jnp.asarray(ratio, out.dtype)
  return out


def _kernel_factors(kernel_hw: Tuple[int, int], new_hw: Tuple[int, int],
                    method: str) -> Tuple[np.ndarray, np.ndarray]:
  """The 1-D maps (qh, ph), (qw, pw) whose kron is `resize_patch_embed`'s map."""
  (ph, pw), (qh, qw) = kernel_hw, new_hw
  if method == "pi":
    return _pinv_transpose_np(ph, qh), _pinv_transpose_np(pw, qw)
  mat_h = _bilinear_matrix_np(ph, qh)
  if method == "area":
    mat_h = mat_h * np.float32((ph * pw) / (qh * qw))
  return mat_h, _bilinear_matrix_np(pw, qw)


def fold_is_cheaper(kernel_shape: Sequence[int], new_hw: Tuple[int, int],
                    num_patches: int) -> bool:
  """Whether `fold_into_patches` + the stored kernel costs fewer FLOPs than resizing it.

  <patch, M kernel> == <M^T patch, kernel>: a coarse grid (patch larger than the
  stored kernel) is cheaper to embed by mapping each patch down to the kernel's
  size, and a small batch cheaper than resizing a large kernel every step.
  """
  (ph, pw, c, d), (qh, qw) = kernel_shape, new_hw
  resize_kernel = 2 * c * d * qh * pw * (ph + qw) + 2 * num_patches * qh * qw * c * d
  fold = 2 * num_patches * c * ph * qw * (qh + pw) + 2 * num_patches * ph * pw * c * d
  return fold < resize_kernel


def fold_into_patches(images: jax.Array, kernel_hw: Tuple[int, int], patch: Tuple[int, int],
                      method: str = "pi") -> jax.Array:
  """Images whose (ph, pw) patches, embedded with the stored kernel, give the tokens
  of `patch`-sized patches embedded with `resize_patch_embed(kernel, patch, method)`.

  Each (qh, qw) patch x becomes Mh^T x Mw, (ph, pw): the transpose of the kernel's
  resize map, applied to the patches instead of the kernel (the same linear algebra;
  tokens agree to float32 rounding). Pixels beyond the last whole patch are dropped,
  as the VALID conv drops them.
  """
  if method not in ("pi", "vanilla", "area"):
    raise UserError(f"the resize cannot be folded into patches for method {method!r}; "
                    "allowed: pi, vanilla, area")
  mat_h, mat_w = (np.asarray(m, images.dtype)
                  for m in _kernel_factors(kernel_hw, patch, method))
  (qh, qw), (ph, pw) = patch, kernel_hw
  n, height, width, c = images.shape
  gh, gw = height // qh, width // qw
  x = images[:, :gh * qh, :gw * qw].reshape(n, gh, qh, gw, qw, c)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("nhiwjc,ia->nhawjc", x, mat_h, precision=hi)
  x = jnp.einsum("nhawjc,jb->nhawbc", x, mat_w, precision=hi)
  return x.reshape(n, gh * ph, gw * pw, c)


def _posemb_grid(posemb, old_hw) -> Tuple[int, int]:
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise UserError(f"posemb must be (1, h*w, D), got shape {tuple(posemb.shape)}")
  n = posemb.shape[1]
  if old_hw is None:
    side = int(round(np.sqrt(n)))
    if side * side != n:
      raise UserError(f"posemb has {n} rows, not a square grid; pass old_hw")
    return side, side
  old_hw = to_hw(old_hw, "old_hw")
  if old_hw[0] * old_hw[1] != n:
    raise UserError(f"posemb has {n} rows, which does not match old_hw={old_hw}")
  return old_hw


def _align_corners_matrix(old: int, new: int) -> np.ndarray:
  """1-D linear interpolation matrix (new, old), corners aligned (scipy zoom, order=1)."""
  mat = np.zeros((new, old), np.float64)
  if old == 1 or new == 1:
    mat[:, 0] = 1.0
    return mat
  pos = np.arange(new) * (old - 1) / (new - 1)
  lo = np.minimum(np.floor(pos).astype(int), old - 2)
  frac = pos - lo
  mat[np.arange(new), lo] = 1.0 - frac
  mat[np.arange(new), lo + 1] = frac
  return mat


def resample_posemb(posemb, new_hw: HW, *, old_hw: HW | None = None,
                    rule: str = "runtime"):
  """Resizes a (1, h*w, D) position embedding to the grid `new_hw`.

  rule="runtime": what the model does every step (bilinear `jax.image.resize`
  WITH antialias, so grids smaller than the stored one are smoothed).
  rule="load": what loading a checkpoint with another grid does (align-corners
  linear zoom, as `scipy.ndimage.zoom(order=1)`); computed in numpy.
  """
  if rule not in POSEMB_RULES:
    raise UserError(f"unknown posemb resample rule {rule!r}; allowed: {POSEMB_RULES}")
  gh, gw = _posemb_grid(posemb, old_hw)
  new_hw = to_hw(new_hw, "new_hw")
  if (gh, gw) == new_hw:
    return posemb
  d = posemb.shape[-1]
  if rule == "runtime":
    grid = jnp.reshape(posemb, (1, gh, gw, d))
    grid = jax.image.resize(grid, (1, *new_hw, d), method="linear")
    return jnp.reshape(grid, (1, new_hw[0] * new_hw[1], d))
  grid = np.asarray(posemb, np.float64).reshape(gh, gw, d)
  grid = np.einsum("ip,jq,pqd->ijd", _align_corners_matrix(gh, new_hw[0]),
                   _align_corners_matrix(gw, new_hw[1]), grid)
  return grid.reshape(1, new_hw[0] * new_hw[1], d).astype(np.asarray(posemb).dtype)
