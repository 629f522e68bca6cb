"""big_vision's remaining image ops (random crop and flip, resize_long, VGG value range,
clipping, images as videos), registered by name beside those of `data.ops`.

They complete the vocabulary transfer configs use; semantics follow big_vision's ops of
the same names. Random ops draw from the stateless seed the pp function hands them.
"""
from __future__ import annotations

import tensorflow as tf

from flexivit_jax.data.ops import _on_image as on_key
from flexivit_jax.data.ops import _pair, _resize_keep_dtype
from flexivit_jax.data.preprocess import register
from flexivit_jax.errors import UserError

# ImageNet's channel mean and std on the 0..255 scale, big_vision's vgg_value_range defaults.
VGG_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
VGG_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def _positive_int(value, what: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UserError(f"{what} must be a positive int, got {value!r}")
  return value


def long_side_size(h, w, longer_size: int):
  """(new_h, new_w) with the longer side `longer_size`, aspect kept (rounded, float32)."""
  h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  ratio = tf.constant(longer_size, tf.float32) / tf.maximum(h, w)
  return tf.cast(tf.round(h * ratio), tf.int32), tf.cast(tf.round(w * ratio), tf.int32)


@register("resize_long")
def resize_long(longer_size, method="area", antialias=True, key="image", inkey=None,
                outkey=None):
  """Resizes so that the longer side equals longer_size, keeping aspect; keeps dtype."""
  _positive_int(longer_size, "resize_long: longer_size")

  def fn(image):
    shape = tf.shape(image)
    new_h, new_w = long_side_size(shape[0], shape[1], longer_size)
    return _resize_keep_dtype(image, tf.stack([new_h, new_w]), method, antialias)

  return on_key(key, inkey, outkey, fn)


@register("random_crop", random=True)
def random_crop(crop_size, key="image", inkey=None, outkey=None):
  """A uniformly placed (h, w) window of the image, every channel kept."""
  crop_h, crop_w = _pair(crop_size)

  def fn(image, seed):
    size = tf.stack([crop_h, crop_w, tf.shape(image)[-1]])
    return tf.image.stateless_random_crop(image, size, seed)

  return on_key(key, inkey, outkey, fn)


@register("random_flip_lr", random=True)
def random_flip_lr(key="image", inkey=None, outkey=None):
  """Flips left-right with probability 1/2 (big_vision's name; `flip_lr` is the same op)."""
  return on_key(key, inkey, outkey,
                lambda im, seed: tf.image.stateless_random_flip_left_right(im, seed))


def _channels(values, name: str) -> tuple:
  if (not isinstance(values, (list, tuple)) or not values
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
    raise UserError(f"vgg_value_range: {name} must be a list of numbers per channel, "
                    f"got {values!r}")
  return tuple(float(v) for v in values)


@register("vgg_value_range")
def vgg_value_range(mean=VGG_MEAN, std=VGG_STD, key="image", inkey=None, outkey=None):
  """(image - mean) / std per channel, in float32, on the 0..255 scale by default."""
  mean, std = _channels(mean, "mean"), _channels(std, "std")
  if len(mean) != len(std) or 0.0 in std:
    raise UserError(f"vgg_value_range: mean {mean} and std {std} need equal lengths and "
                    "no zero std")
  return on_key(key, inkey, outkey,
                lambda im: (tf.cast(im, tf.float32) - mean) / std)


@register("clip_value_range")
def clip_value_range(vmin=-1, vmax=1, key="image", inkey=None, outkey=None):
  """Clips values to [vmin, vmax] (float32)."""
  if vmin > vmax:
    raise UserError(f"clip_value_range: vmin={vmin} is above vmax={vmax}")
  return on_key(key, inkey, outkey,
                lambda im: tf.clip_by_value(tf.cast(im, tf.float32), vmin, vmax))


@register("convert_to_video")
def convert_to_video(num_frames, key="image", inkey=None, outkey=None):
  """An image as a still video: (H, W, C) -> (num_frames, H, W, C), every frame equal."""
  _positive_int(num_frames, "convert_to_video: num_frames")
  return on_key(key, inkey, outkey,
                lambda im: tf.tile(im[None], [num_frames, 1, 1, 1]))
