"""Inference at any patch size with the size-dependent parameters resized once.

A FlexiViT stores its patch-embedding kernel and position embedding at fixed
sizes and resizes them on every call. For serving, `Predictor` resizes them once
per patch size, keeps the result, and calls the model with parameters that are
already at the target size (the model then skips its own resize, exactly).
A `Predictor` is also an evaluator's predict function, `predictor(params, images, flexi)`.
`gflops_per_image` counts the compiled computation's FLOPs (XLA cost analysis);
`choose_seqhw` picks the finest grid within a FLOP or latency budget.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.flops import gflops
from flexivit_jax.models import resize
from flexivit_jax.models.vit import HW, FlexiViT, resolve_patch

# The evaluation preprocessing of the digits demo (configs/demo_digits.py).
DEFAULT_PP = "decode|resize(48)|value_range(-1, 1)"
Patch = Tuple[int, int]
# The model's outputs besides its logits (the keys of FlexiViT's outputs dict).
OUTPUTS = ("stem", "with_posemb", "encoded", "head_input", "pre_logits", "pre_logits_2d",
           "logits_2d")


def params_at_size(model: FlexiViT, params: Mapping, patch: Patch, grid: Patch
                   ) -> Tuple[FlexiViT, Dict[str, Any]]:
  """(model, params) with the kernel at `patch` and the learned posemb at `grid`.

  The returned model's `posemb_size` is `grid`, so it resamples nothing; its
  output equals `model.apply(params)` at that patch size. Works on arrays and on
  `jax.ShapeDtypeStruct`s (via `jax.eval_shape`).
  """
  method = model.resize_method
  resize_kernel = lambda k: resize.resize_patch_embed(k, patch, method)
  resize_posemb = lambda pe: resize.resample_posemb(
      pe, grid, old_hw=resize.to_hw(model.posemb_size, "posemb_size"))
  if isinstance(params["embedding"]["kernel"], jax.ShapeDtypeStruct):
    resize_kernel = functools.partial(jax.eval_shape, resize_kernel)
    resize_posemb = functools.partial(jax.eval_shape, resize_posemb)
  out = dict(params)
  out["embedding"] = {**params["embedding"], "kernel": resize_kernel(params["embedding"]["kernel"])}
  if "pos_embedding" in params and model.posemb == "learn":
    out["pos_embedding"] = resize_posemb(params["pos_embedding"])
  return model.clone(posemb_size=grid), out


def _grid(image_hw: Tuple[int, int], patch: Patch) -> Patch:
  return image_hw[0] // patch[0], image_hw[1] // patch[1]


def _output_fn(model: FlexiViT, patch: Patch, output: str = "logits") -> Callable:
  """The jitted model at `patch`, returning its logits or another of its outputs."""
  def apply(params, images):
    logits, outputs = model.apply({"params": params}, images, patch_size=patch)
    return logits if output == "logits" else outputs[output]
  return jax.jit(apply)


def gflops_per_image(model: FlexiViT, params_or_shapes: Mapping, image_size: HW, *,
                     seqhw: Optional[HW] = None, patch_size: Optional[HW] = None,
                     channels: int = 3, batch_size: int = 1) -> float:
  """GFLOPs of one forward pass per image at a size, resize excluded (as served)."""
  image_hw = resize.to_hw(image_size, "image_size")
  patch = resolve_patch(image_hw, seqhw, patch_size)
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)),
                        params_or_shapes)
  sized_model, sized = params_at_size(model, shapes, patch, _grid(image_hw, patch))
  images = jax.ShapeDtypeStruct((batch_size, *image_hw, channels), jnp.float32)
  apply = lambda p, x: sized_model.apply({"params": p}, x, patch_size=patch)[0]
  return gflops(jax.jit(apply).lower(sized, images).compile()) / batch_size


class Predictor:
  """Serves one FlexiViT at any size; resizes its kernel/posemb once per patch size.

    predictor = Predictor(model, params)
    logits = predictor.predict(images, seqhw=8)     # NHWC float images
    logits = predictor.predict_files(paths, seqhw=8)  # preprocessed with `pp`
    logits = predictor(params, images, (("seqhw", 8),))  # an evaluator's predict_fn
    Predictor(model, params, output="pre_logits")  # serves the pre-logits instead
  """

  def __init__(self, model: FlexiViT, params: Mapping, pp: str = DEFAULT_PP,
               output: str = "logits"):
    model.hparams()  # Validates the fields before anything is cached.
    if output != "logits" and output not in OUTPUTS:
      raise UserError(f"the model has no output {output!r}; allowed: logits, "
                      f"{', '.join(OUTPUTS)}")
    self.model, self.params, self.pp, self.output = model, params, pp, output
    self._cache: Dict[Tuple[Patch, Patch], Tuple[Dict[str, Any], Callable]] = {}

  def sized(self, image_hw: Tuple[int, int], seqhw: Optional[HW] = None,
            patch_size: Optional[HW] = None) -> Tuple[Dict[str, Any], Callable]:
    """(params at that size, jitted logits fn), built on first use, then cached."""
    if seqhw is None and patch_size is None:
      patch_size = self.model.hparams()["patch_size"]
    patch = resolve_patch(tuple(image_hw), seqhw, patch_size)
    key = (patch, _grid(image_hw, patch))
    if key not in self._cache:
      sized_model, sized = params_at_size(self.model, self.params, *key)
      self._cache[key] = (jax.device_put(sized), _output_fn(sized_model, patch, self.output))
    return self._cache[key]

  def predict(self, images, seqhw: Optional[HW] = None,
              patch_size: Optional[HW] = None) -> jax.Array:
    """Logits (N, num_classes), or the served output, for NHWC images at a seqhw or patch."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
      raise UserError(f"images must be NHWC (batch, height, width, channels), got shape "
                       f"{tuple(images.shape)}")
    params, fn = self.sized(images.shape[1:3], seqhw, patch_size)
    return fn(params, images)

  def __call__(self, params: Mapping, images, flexi: Tuple[Tuple[str, Any], ...]) -> jax.Array:
    """Logits at `flexi` ((("seqhw", s),) or patch_size): the evaluators' predict_fn.

    Other params than the served ones replace them (their resized copies are made anew).
    """
    if params is not self.params:
      self.params, self._cache = params, {}
    return self.predict(images, **dict(flexi))

  def predict_files(self, paths: Sequence[str], seqhw: Optional[HW] = None,
                    patch_size: Optional[HW] = None) -> jax.Array:
    """Logits for image files, decoded and preprocessed with `self.pp` (as eval)."""
    return self.predict(load_images(paths, self.pp), seqhw, patch_size)


def load_images(paths: Sequence[str], pp: str) -> np.ndarray:
  """Reads image files and applies an eval pp string (starting with `decode`)."""
  import tensorflow as tf

  from flexivit_jax.data import preprocess
  fn = preprocess.get_pp_fn(pp)
  images = []
  for path in paths:
    if not tf.io.gfile.exists(path):
      raise UserError(f"image file {path!r} does not exist")
    images.append(np.asarray(fn({"image": tf.io.read_file(path)})["image"]))
  if not images:
    raise UserError("no image files given")
  return np.stack(images)


def measure_ms(fn: Callable, *args, repeats: int = 5) -> float:
  """Median wall time of `fn(*args)` in ms after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e3)


def default_seqhws(image_size: int) -> list[int]:
  """Grids whose patch tiles the image exactly, coarse to fine."""
  return [s for s in range(1, image_size + 1) if image_size % s == 0]


def _cost(model, params_or_shapes, image_size, seqhw, batch_size, kind, channels) -> float:
  if kind == "gflops":
    return gflops_per_image(model, params_or_shapes, image_size, seqhw=seqhw,
                            channels=channels)
  params = jax.tree.map(lambda a: jnp.zeros(np.shape(a), jnp.result_type(a)),
                        params_or_shapes)
  predictor = Predictor(model, params)
  images = jnp.zeros((batch_size, image_size, image_size, channels), jnp.float32)
  predictor.sized(images.shape[1:3], seqhw)  # Resize and compile outside the timing.
  return measure_ms(lambda x: predictor.predict(x, seqhw=seqhw), images)


def choose_seqhw(model: FlexiViT, params_or_shapes: Mapping, image_size: int,
                 max_gflops: Optional[float] = None, max_ms: Optional[float] = None,
                 batch_size: int = 1, *, seqhws: Optional[Sequence[int]] = None,
                 channels: int = 3) -> int:
  """The finest seqhw whose GFLOPs/image (counted) or batch latency (measured) fits.

  Cost grows with the grid, so a bisection over `seqhws` (default: every grid
  that tiles the image) compiles only a few sizes.
  """
  if (max_gflops is None) == (max_ms is None):
    raise UserError(f"give exactly one of max_gflops and max_ms (got max_gflops={max_gflops}, "
                     f"max_ms={max_ms})")
  kind, budget = ("gflops", max_gflops) if max_ms is None else ("ms", max_ms)
  if budget <= 0:
    raise UserError(f"the budget must be positive, got {kind}={budget}")
  candidates = sorted(seqhws or default_seqhws(image_size))
  lo, hi, best = 0, len(candidates) - 1, None
  while lo <= hi:
    mid = (lo + hi) // 2
    if _cost(model, params_or_shapes, image_size, candidates[mid], batch_size, kind,
             channels) <= budget:
      best, lo = candidates[mid], mid + 1
    else:
      hi = mid - 1
  if best is None:
    raise UserError(f"no grid fits {kind}<={budget}: even seqhw={candidates[0]} costs more; "
                     "raise the budget or use smaller images")
  return best
