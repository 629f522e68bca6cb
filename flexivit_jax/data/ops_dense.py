"""pp ops for dense prediction: each transforms the image and its per-pixel mask together.

The same crop window, flip and size for both, so the mask stays aligned with the
pixels; the image is resized bilinearly, the mask with nearest neighbour (labels
are ids, never averaged). `key` names the image (default "image"), `mask_key`
the mask (default "mask", an (H, W, 1) integer map, as `cluttered_digits` stores
it). `seg_labels` turns the mask into the `labels` the segmentation trainer and
evaluator read. Registered in `data.preprocess` beside the ops of `data.ops`.
"""
from __future__ import annotations

import tensorflow as tf

from flexivit_jax.data.ops import _pair, _resize_keep_dtype, small_side_size
from flexivit_jax.data.preprocess import register
from flexivit_jax.errors import UserError

DEFAULT_IGNORE = 255  # The label padding and seg_labels write where no class applies.


def _on_pair(key: str, mask_key: str, fn):
  """Wraps (image, mask[, seed]) -> (image, mask) into an example -> example function."""

  def apply(data, *maybe_seed):
    data = dict(data)
    for k in (key, mask_key):
      if k not in data:
        raise KeyError(f"dense pp op needs keys {key!r} and {mask_key!r}; example has "
                       f"{sorted(data)}")
    data[key], data[mask_key] = fn(data[key], data[mask_key], *maybe_seed)
    return data

  return apply


def _resize_pair(image, mask, size):
  return (_resize_keep_dtype(image, size, "bilinear"),
          _resize_keep_dtype(mask, size, "nearest"))


def _positive_int(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise UserError(f"{name} must be a positive int, got {value!r}")


@register("dense_resize")
def dense_resize(size, key="image", mask_key="mask"):
  """Resizes both to `size` (int or (h, w)): image bilinear, mask nearest neighbour."""
  size = _pair(size)
  return _on_pair(key, mask_key, lambda im, m: _resize_pair(im, m, size))


@register("dense_resize_small", random=True)
def dense_resize_small(smaller_size, min_scale=1.0, max_scale=1.0, key="image",
                       mask_key="mask"):
  """Resizes both so the smaller side is `smaller_size` times a random scale drawn
  uniformly from [min_scale, max_scale] (Segmenter's ratio range is 0.5..2.0)."""
  _positive_int(smaller_size, "smaller_size")
  if not 0 < min_scale <= max_scale:
    raise UserError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")

  def fn(image, mask, seed):
    scale = tf.random.stateless_uniform([], seed, min_scale, max_scale)
    target = tf.cast(tf.round(smaller_size * scale), tf.int32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ratio = tf.cast(target, tf.float32) / tf.minimum(h, w)
    new = tf.stack([tf.cast(tf.round(h * ratio), tf.int32),
                    tf.cast(tf.round(w * ratio), tf.int32)])
    if min_scale == max_scale == 1.0:  # The deterministic rule of resize_small.
      new = tf.stack(small_side_size(shape[0], shape[1], smaller_size))
    return _resize_pair(image, mask, new)

  return _on_pair(key, mask_key, fn)


@register("dense_random_crop", random=True)
def dense_random_crop(size, key="image", mask_key="mask"):
  """The same random (h, w) window of both; a side shorter than the window is kept
  whole (follow with `dense_pad` for fixed shapes)."""
  ch, cw = _pair(size)

  def fn(image, mask, seed):
    shape = tf.shape(image)
    h, w = tf.minimum(shape[0], ch), tf.minimum(shape[1], cw)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    top = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - w + 1, dtype=tf.int32)
    return (tf.image.crop_to_bounding_box(image, top, left, h, w),
            tf.image.crop_to_bounding_box(mask, top, left, h, w))

  return _on_pair(key, mask_key, fn)


@register("dense_central_crop")
def dense_central_crop(size, key="image", mask_key="mask"):
  """The central (h, w) window of both (offsets round down, as central_crop)."""
  ch, cw = _pair(size)

  def fn(image, mask):
    shape = tf.shape(image)
    top, left = (shape[0] - ch) // 2, (shape[1] - cw) // 2
    return (tf.image.crop_to_bounding_box(image, top, left, ch, cw),
            tf.image.crop_to_bounding_box(mask, top, left, ch, cw))

  return _on_pair(key, mask_key, fn)


@register("dense_flip_lr", random=True)
def dense_flip_lr(key="image", mask_key="mask"):
  """Flips both left-right, with probability 1/2 (one coin for the pair)."""

  def fn(image, mask, seed):
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
            tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask))

  return _on_pair(key, mask_key, fn)


@register("dense_pad")
def dense_pad(size, value=0, mask_value=DEFAULT_IGNORE, key="image", mask_key="mask"):
  """Pads both at the bottom and right to exactly `size` (h, w): the image with `value`,
  the mask with `mask_value` (the ignore label, so padding is never trained on)."""
  ph, pw = _pair(size)

  def fn(image, mask):
    shape = tf.shape(image)
    check = tf.debugging.assert_less_equal(
        shape[:2], tf.constant([ph, pw]), message=f"dense_pad({ph}, {pw}): image larger")
    with tf.control_dependencies([check]):
      pad = [[0, ph - shape[0]], [0, pw - shape[1]], [0, 0]]
    image = tf.pad(image, pad, constant_values=tf.cast(value, image.dtype))
    mask = tf.pad(mask, pad, constant_values=tf.cast(mask_value, mask.dtype))
    image.set_shape([ph, pw, image.shape[-1]])
    mask.set_shape([ph, pw, mask.shape[-1]])
    return image, mask

  return _on_pair(key, mask_key, fn)


@register("seg_labels")
def seg_labels(offset=0, ignore_label=DEFAULT_IGNORE, key="mask", outkey="labels"):
  """`outkey` = the (H, W, 1) mask as (H, W) int32 class ids, minus `offset`.

  Pixels holding `ignore_label` keep it; ids that fall below 0 become it. ADE20k's
  annotations (0: unlabelled, 1..150) use offset=1; cluttered_digits' (0:
  background, 1..10: the digit) offset=0.
  """
  if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
    raise UserError(f"offset must be an int >= 0, got {offset!r}")

  def fn(data):
    data = dict(data)
    if key not in data:
      raise KeyError(f"seg_labels needs key {key!r}; example has {sorted(data)}")
    mask = tf.cast(data[key], tf.int32)
    if mask.shape.rank == 3:
      mask = mask[..., 0]
    out = mask - offset
    data[outkey] = tf.where((mask == ignore_label) | (out < 0), ignore_label, out)
    return data

  return fn
