"""The FlexiViT model: a ViT whose patch size is chosen at call time.

Parameter names and shapes follow big_vision's `vit` / `proj.flexi.vit`, so
reference npz checkpoints load without renaming. The patch-embedding kernel and
the position embedding are stored at fixed sizes (`patch_size`, `posemb_size`)
and resized on the fly (`flexivit_jax.models.resize`) to the grid of each call.

Precision (`dtype_mm`, as big_vision's ViT): params are float32 and stay so. The
PI-resize of the patch kernel (or the fold of the patches into the kernel's size)
and the posemb resampling run in float32, because the pseudo-inverse is
ill-conditioned in bfloat16; their results are cast to `dtype_mm` only where they
are used (`FlexiPatchEmbed`: the resized kernel and the folded patches just before
the conv; `FlexiViT._posemb`: the resampled posemb at the add). The encoder runs in
`dtype_mm` (`layers`); its output is cast back to float32 after `encoder_norm`,
so pooling, the MAP head, pre-logits and the head run in float32 and logits are
float32 whatever `dtype_mm` is.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import typing
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.models import resize
from flexivit_jax.models.layers import (REMAT_NONE, Encoder, MAPHead, checkpoint_policy,
                                        posemb_sincos_2d)

Array = jax.Array


HW = Union[int, Sequence[int]]

POOL_TYPES = ("gap", "tok", "map")
# float16 is left out: the trainer has no loss scaling, which float16 gradients need.
DTYPES_MM = ("float32", "bfloat16")
POSEMB_TYPES = ("learn", "sincos2d")

# name -> (width, depth, mlp_dim, num_heads), as big_vision's ViT variants.
VARIANTS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


def decode_variant(variant: str) -> dict:
  """'B' or 'B/8' -> dict(width, depth, mlp_dim, num_heads[, patch_size])."""
  name, _, patch = variant.partition("/")
  if name not in VARIANTS:
    raise UserError(f"unknown ViT variant {variant!r}; allowed: "
                     f"{', '.join(VARIANTS)} (optionally with '/<patch>', e.g. 'B/8')")
  out = dict(zip(("width", "depth", "mlp_dim", "num_heads"), VARIANTS[name]))
  if patch:
    if not patch.isdigit() or int(patch) <= 0:
      raise UserError(f"bad patch size in variant {variant!r}; expected e.g. 'B/16'")
    out["patch_size"] = (int(patch), int(patch))
  return out


class FlexiPatchEmbed(nn.Module):
  """VALID conv with stride = patch, its kernel resized to the requested patch.

  The stored kernel keeps whatever size it was created or loaded with; only the
  size used at this call changes. Where it costs fewer FLOPs (patches larger than
  the kernel, or few patches), the resize's transpose maps the patches to the
  kernel's size instead: the same tokens to float32 rounding.

  Both resizes run in float32 (images and kernel upcast first); the resized kernel,
  the (folded) patches and the bias are cast to `dtype` just before the conv, which
  runs and returns in `dtype`.
  """
  width: int
  kernel_size: Tuple[int, int]
  resize_method: str = "pi"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, patch: Tuple[int, int]) -> Array:
    channels = x.shape[-1]
    shape = (*self.kernel_size, channels, self.width)
    if self.has_variable("params", "kernel"):
      stored = self.get_variable("params", "kernel").shape
      if len(stored) != 4 or stored[2] != channels or stored[3] != self.width:
        raise UserError(
            f"images have {channels} channels but the patch-embedding kernel has shape "
            f"{tuple(stored)} (expects (ph, pw, {channels}, {self.width})); "
            "feed images with as many channels as the kernel")
      shape = tuple(stored)
    kernel = self.param("kernel", nn.initializers.normal(stddev=1 / np.sqrt(self.width)),
                        shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
    x = x.astype(jnp.float32)
    num_patches = x.shape[0] * (x.shape[1] // patch[0]) * (x.shape[2] // patch[1])
    if (self.resize_method != "norm" and tuple(kernel.shape[:2]) != tuple(patch)
        and resize.fold_is_cheaper(kernel.shape, patch, num_patches)):
      # Coarse grids: map the patches to the stored kernel's size instead (fewer FLOPs).
      x = resize.fold_into_patches(x, kernel.shape[:2], patch, self.resize_method)
      patch = tuple(kernel.shape[:2])
    else:
      kernel = resize.resize_patch_embed(kernel, patch, self.resize_method)
    # The cast to dtype_mm: after the float32 resize, right before the conv.
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=patch,
        padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


def _check_images(images) -> None:
  if getattr(images, "ndim", None) != 4:
    raise UserError(
        f"images must be NHWC (batch, height, width, channels), got shape "
        f"{tuple(getattr(images, 'shape', ()))}")
  if images.shape[-1] not in (1, 3, 4) and images.shape[1] in (1, 3, 4):
    raise UserError(
        f"images look NCHW (shape {tuple(images.shape)}); FlexiViT takes NHWC: "
        "transpose with images.transpose(0, 2, 3, 1)")


def resolve_patch(image_hw: Tuple[int, int], seqhw: Optional[HW],
                  patch_size: Optional[HW]) -> Tuple[int, int]:
  """Patch size for one call: from `seqhw` (floor of image / seqhw) or given."""
  h, w = image_hw
  if seqhw is not None and patch_size is not None:
    raise UserError(f"pass seqhw or patch_size, not both (got seqhw={seqhw}, "
                     f"patch_size={patch_size})")
  if seqhw is not None:
    sh, sw = resize.to_hw(seqhw, "seqhw")
    if sh > h or sw > w:
      raise UserError(f"seqhw={seqhw} is larger than the image ({h}x{w}); "
                       f"allowed: 1..{min(h, w)} tokens per side")
    return h // sh, w // sw
  ph, pw = resize.to_hw(patch_size, "patch_size")
  if ph > h or pw > w:
    raise UserError(f"patch_size={patch_size} is larger than the image ({h}x{w}); "
                     f"allowed: 1..{h} x 1..{w}")
  return ph, pw


class FlexiViT(nn.Module):
  """ViT with flexible patch size; returns `(logits, intermediates)`.

  `FlexiViT(num_classes=10, variant='S')` fills width/depth/mlp_dim/num_heads
  from the variant; explicitly given fields override it. At call time pass
  `seqhw` (tokens per side) or `patch_size`; with neither, `self.seqhw` is used,
  and failing that the stored kernel's `patch_size`.

  Scale options (big_vision's names): `dtype_mm` the dtype of the matmuls and
  activations ("float32" or "bfloat16"; params and logits stay float32, see the
  module docstring for where each cast happens); `remat_policy` recomputes each
  encoder block in the backward pass ("none", or a `jax.checkpoint_policies` name
  such as "nothing_saveable" or "dots_saveable"); `scan` runs the blocks under
  `nn.scan` (params `Transformer/encoderblock/...` stacked along a leading axis;
  checkpoints keep the per-block names, `flexivit_jax.checkpoints.layout`).
  """
  num_classes: Optional[int] = None
  variant: Optional[str] = None
  patch_size: Optional[Sequence[int]] = None  # Size the kernel is created at.
  posemb_size: Sequence[int] = (7, 7)
  width: Optional[int] = None
  depth: Optional[int] = None
  mlp_dim: Optional[int] = None
  num_heads: Optional[int] = None
  posemb: str = "learn"
  pool_type: str = "gap"
  head_zeroinit: bool = True
  rep_size: Union[int, bool] = False
  dropout: float = 0.0
  seqhw: Optional[HW] = None
  resize_method: str = "pi"
  token_norm: Optional[float] = None  # For resize_method="norm": every token's L2 norm.
  dtype_mm: str = "float32"
  remat_policy: str = "none"
  scan: bool = False

  def hparams(self) -> dict:
    """The architecture after applying the variant; validates every field."""
    hp = dict(patch_size=(32, 32))
    if self.variant is not None:
      hp.update(decode_variant(self.variant))
    for name in ("patch_size", "width", "depth", "mlp_dim", "num_heads"):
      if getattr(self, name) is not None:
        hp[name] = getattr(self, name)
    missing = [k for k in ("width", "depth", "num_heads") if k not in hp]
    if missing:
      raise UserError(f"FlexiViT needs {', '.join(missing)}: pass them or a variant "
                       f"({', '.join(VARIANTS)})")
    hp["patch_size"] = resize.to_hw(hp["patch_size"], "patch_size")
    hp.setdefault("mlp_dim", None)
    bad = {k: hp[k] for k in ("width", "depth", "num_heads", "mlp_dim")
           if hp[k] is not None and hp[k] <= 0}
    if bad:
      raise UserError(f"FlexiViT sizes must be positive, got {bad}")
    if hp["width"] % hp["num_heads"]:
      raise UserError(f"width={hp['width']} is not divisible by num_heads={hp['num_heads']}")
    if self.pool_type not in POOL_TYPES:
      raise UserError(f"unknown pool_type {self.pool_type!r}; allowed: {POOL_TYPES}")
    if self.posemb not in POSEMB_TYPES:
      raise UserError(f"unknown posemb {self.posemb!r}; allowed: {POSEMB_TYPES}")
    if self.resize_method not in resize.RESIZE_METHODS:
      raise UserError(f"unknown resize_method {self.resize_method!r}; "
                       f"allowed: {resize.RESIZE_METHODS}")
    if (self.resize_method == "norm") != (self.token_norm is not None):
      raise UserError(f"resize_method={self.resize_method!r} with token_norm={self.token_norm}: "
                       "the 'norm' method needs token_norm (the mean token norm at the "
                       "training size) and the other methods take none")
    if self.dtype_mm not in DTYPES_MM:
      raise UserError(f"unknown dtype_mm {self.dtype_mm!r}; allowed: {DTYPES_MM}")
    checkpoint_policy(self.remat_policy)  # Raises for an unknown name.
    if not isinstance(self.scan, bool):
      raise UserError(f"scan={self.scan!r} must be True or False")
    return hp

  def _posemb(self, h: int, w: int, width: int) -> Array:
    if self.posemb == "sincos2d":
      return posemb_sincos_2d(h, w, width)
    gh, gw = resize.to_hw(self.posemb_size, "posemb_size")
    shape = (1, gh * gw, width)
    if self.has_variable("params", "pos_embedding"):
      stored = tuple(self.get_variable("params", "pos_embedding").shape)
      if stored != shape:
        raise UserError(
            f"pos_embedding has shape {stored} but the model expects {shape} "
            f"(posemb_size={self.posemb_size}); load checkpoints with "
            "flexivit_jax.load_pretrained to resample it")
    pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(width)),
                    shape, jnp.float32)
    return resize.resample_posemb(pe, (h, w), old_hw=(gh, gw))  # float32; cast at the add.

  @nn.compact
  def __call__(self, images: Array, *, seqhw: Optional[HW] = None,
               patch_size: Optional[HW] = None, train: bool = False
               ) -> Tuple[Array, dict[str, Any]]:
    hp = self.hparams()
    _check_images(images)
    if seqhw is None and patch_size is None:
      seqhw = self.seqhw
      patch_size = hp["patch_size"] if seqhw is None else None
    patch = resolve_patch(images.shape[1:3], seqhw, patch_size)
    width, out = hp["width"], {}
    dtype = jnp.dtype(self.dtype_mm)

    x = FlexiPatchEmbed(width, hp["patch_size"], self.resize_method, dtype=dtype,
                        name="embedding")(images, patch)
    if self.token_norm is not None:  # 'norm' resize: vanilla kernel, tokens rescaled.
      x32 = x.astype(jnp.float32)
      x = (x32 * (self.token_norm / jnp.maximum(
          jnp.linalg.norm(x32, axis=-1, keepdims=True), 1e-6))).astype(dtype)
    out["stem"] = x
    n, h, w, d = x.shape
    x = jnp.reshape(x, [n, h * w, d])
    x = out["with_posemb"] = x + self._posemb(h, w, width).astype(dtype)
    if self.pool_type == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, width), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(dtype), [n, 1, 1]), x], axis=1)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    x, out["encoder"] = Encoder(depth=hp["depth"], mlp_dim=hp["mlp_dim"],
                                num_heads=hp["num_heads"], dropout=self.dropout,
                                dtype=dtype, remat_policy=self.remat_policy, scan=self.scan,
                                name="Transformer")(x, deterministic=not train)
    # Back to float32: the pooling, heads and logits run in float32 whatever dtype_mm is.
    x = x.astype(jnp.float32)
    encoded = out["encoded"] = x

    if self.pool_type == "map":
      x = out["head_input"] = MAPHead(num_heads=hp["num_heads"], mlp_dim=hp["mlp_dim"])(x)
    elif self.pool_type == "gap":
      x = out["head_input"] = jnp.mean(x, axis=1)
    else:  # tok
      x = out["head_input"] = x[:, 0]
      encoded = encoded[:, 1:]
    x_2d = jnp.reshape(encoded, [n, h, w, -1])

    if self.rep_size:
      rep_size = width if self.rep_size is True else self.rep_size
      hid = nn.Dense(rep_size, name="pre_logits")
      x_2d = nn.tanh(hid(x_2d))
      x = nn.tanh(hid(x))
    out["pre_logits_2d"] = x_2d
    out["pre_logits"] = x

    if self.num_classes:
      kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
      head = nn.Dense(self.num_classes, name="head", **kw)
      out["logits_2d"] = head(x_2d)
      x = out["logits"] = head(x)
    return x, out


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


# ----------------------------------------------------------------------------
# Building the model from a config dict (the `model` key of a training config).

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(FlexiViT)
                     if f.name not in ("parent", "name"))


def _type_ok(value: Any, hint: Any) -> bool:
  """Whether a config value fits a FlexiViT field's type hint (ints, strs, int pairs)."""
  origin = typing.get_origin(hint)
  if origin is Union:
    return any(_type_ok(value, h) for h in typing.get_args(hint))
  if hint is type(None):
    return value is None
  if origin in (collections.abc.Sequence, list, tuple):
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  return isinstance(value, hint) if isinstance(hint, type) else True


def _hint_text(hint: Any) -> str:
  """Optional[int] -> 'an int'; Sequence[int] -> 'a sequence of ints'."""
  args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
  names = []
  for a in args:
    if a is not type(None):
      name = "sequence of ints" if typing.get_origin(a) else getattr(a, "__name__", str(a))
      names.append(("an " if name[0] in "aeiou" else "a ") + name)
  return " or ".join(names)


def from_config(model_cfg: Any, where: str = "model") -> FlexiViT:
  """A FlexiViT from a config dict; bad field names, types or values raise UserError."""
  if not hasattr(model_cfg, "keys"):
    raise UserError(f"config key {where!r} must be a dict of FlexiViT fields, got {model_cfg!r}")
  hints = typing.get_type_hints(FlexiViT)
  kwargs = {}
  for key, value in dict(model_cfg).items():
    if key not in MODEL_FIELDS:
      raise UserError(f"unknown config key '{where}.{key}'; FlexiViT fields: "
                      f"{', '.join(MODEL_FIELDS)}")
    if not _type_ok(value, hints[key]):
      raise UserError(f"bad value for config key '{where}.{key}': {value!r} is not "
                      f"{_hint_text(hints[key])}")
    kwargs[key] = tuple(value) if isinstance(value, list) else value
  model = FlexiViT(**kwargs)
  model.hparams()  # Validates the variant and the fields now, not at trace time.
  return model
