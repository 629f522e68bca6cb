"""The big_vision preprocessing ops, each a factory registered by name in `data.preprocess`.

A factory receives the op's arguments as the pp string writes them and returns a function
acting on ONE example, a dict of tf tensors; random ops also receive a stateless seed.
"""
from __future__ import annotations

import tensorflow as tf

from flexivit_jax.data import randaug as randaug_lib
from flexivit_jax.data.preprocess import register
from flexivit_jax.errors import UserError

# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _pair(size) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  size = tuple(size)
  if len(size) != 2 or not all(isinstance(s, int) for s in size):
    raise UserError(f"size must be an int or (h, w), got {size!r}")
  return size


def _on_image(key: str, inkey: str | None, outkey: str | None, fn):
  """Wraps an image->image function into an example->example function.

  As big_vision's in/out-key ops: reads `inkey` (default `key`), writes
  `outkey` (default `key`); `key` defaults to "image".
  """
  inkey, outkey = inkey or key, outkey or key

  def apply(data, *maybe_seed):
    data = dict(data)
    if inkey not in data:
      raise KeyError(f"pp op needs key {inkey!r}; example has {sorted(data)}")
    data[outkey] = fn(data[inkey], *maybe_seed)
    return data

  return apply


def _resize_keep_dtype(image, size, method="bilinear", antialias=False):
  """tf.image.resize, then clip to the input dtype's range and cast back."""
  dtype = image.dtype
  out = tf.image.resize(image, size, method=method, antialias=antialias)
  if dtype.is_integer:
    out = tf.clip_by_value(out, dtype.min, dtype.max)
  return tf.cast(out, dtype)


def _decode(image, channels=3):
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=channels,
                               expand_animations=False)
    image.set_shape([None, None, channels])
  return image


def _distorted_box(shape, seed, area_min, area_max):
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.zeros([0, 0, 4], tf.float32), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(area_min / 100, area_max / 100),
      use_image_if_no_bounding_boxes=True)
  return begin, size


def small_side_size(h, w, smaller_size: int):
  """(new_h, new_w) of resize_small, computed in float32 as the reference.

  float64 would round about 1e-4 of shapes the other way (224x231 ->
  resize_small(240) is 240x247 in float32, 240x248 in float64). Accepts
  tensors of any shape (vectorised).
  """
  h = tf.cast(h, tf.float32)
  w = tf.cast(w, tf.float32)
  ratio = tf.constant(smaller_size, tf.float32) / tf.minimum(h, w)
  return (tf.cast(tf.round(h * ratio), tf.int32),
          tf.cast(tf.round(w * ratio), tf.int32))


def _channel_values(value, name: str):
  """A number, or a per-channel list of numbers, as float32 (checked now)."""
  if isinstance(value, (list, tuple)):
    if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                            for v in value):
      raise UserError(f"{name} must be a number or a list of numbers, got {value!r}")
    return tf.constant(value, tf.float32), len(value)
  if not isinstance(value, (int, float)) or isinstance(value, bool):
    raise UserError(f"{name} must be a number or a list of numbers, got {value!r}")
  return float(value), None


# ---------------------------------------------------------------------------
# Ops.
# ---------------------------------------------------------------------------


@register("decode")
def decode(channels=3, key="image", inkey=None, outkey=None):
  """Decodes an encoded image string to uint8; decoded images pass through."""
  return _on_image(key, inkey, outkey, lambda im: _decode(im, channels))


@register("inception_crop", random=True)
def inception_crop(size=None, area_min=5, area_max=100, method="bilinear",
                   antialias=False, key="image", inkey=None, outkey=None):
  """Random crop of 5-100% area and 3/4..4/3 aspect, optional resize."""
  if size is not None:
    size = _pair(size)

  def crop(image, seed):
    begin, crop_size = _distorted_box(tf.shape(image), seed, area_min,
                                       area_max)
    image = tf.slice(image, begin, crop_size)
    image.set_shape([None, None, 3 if image.shape[-1] is None
                     else image.shape[-1]])
    if size is not None:
      image = _resize_keep_dtype(image, size, method, antialias)
    return image

  return _on_image(key, inkey, outkey, crop)


@register("decode_jpeg_and_inception_crop", random=True)
def decode_jpeg_and_inception_crop(size=None, area_min=5, area_max=100,
                                   method="bilinear", antialias=False,
                                   key="image", inkey=None, outkey=None):
  """Fused JPEG decode + inception crop (only the crop window is decoded).

  Non-JPEG strings are fully decoded then cropped; already decoded images are
  cropped. The crop window is identical in all three cases.
  """
  if size is not None:
    size = _pair(size)

  def crop(image, seed):
    if image.dtype == tf.string:
      def jpeg():
        shape = tf.image.extract_jpeg_shape(image)
        begin, crop_size = _distorted_box(shape, seed, area_min, area_max)
        window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
        return tf.image.decode_and_crop_jpeg(image, window, channels=3)

      def other():
        im = _decode(image, 3)
        begin, crop_size = _distorted_box(tf.shape(im), seed, area_min,
                                          area_max)
        return tf.slice(im, begin, crop_size)

      out = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    else:
      begin, crop_size = _distorted_box(tf.shape(image), seed, area_min,
                                        area_max)
      out = tf.slice(image, begin, crop_size)
    out.set_shape([None, None, 3])
    if size is not None:
      out = _resize_keep_dtype(out, size, method, antialias)
    return out

  return _on_image(key, inkey, outkey, crop)


@register("flip_lr", random=True)
def flip_lr(key="image", inkey=None, outkey=None):
  """Random horizontal flip with probability 1/2."""
  return _on_image(
      key, inkey, outkey,
      lambda im, seed: tf.image.stateless_random_flip_left_right(im, seed))


@register("randaug", random=True)
def randaug(num_layers=2, magnitude=10, key="image", inkey=None, outkey=None):
  """RandAugment as the reference's `randaug` (uint8 RGB in and out)."""
  if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
    raise UserError(f"num_layers must be an int >= 0, got {num_layers!r}")
  if not isinstance(magnitude, (int, float)) or isinstance(magnitude, bool) or magnitude < 0:
    raise UserError(f"magnitude must be a number >= 0, got {magnitude!r}")

  # Traced once: eagerly, switch_case would otherwise re-trace all 16 branches
  # per layer for every example.
  augment = tf.function(
      lambda image, seed: randaug_lib.randaugment(image, num_layers, magnitude, seed),
      input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)])

  def fn(image, seed):
    if image.dtype != tf.uint8:
      raise TypeError(f"randaug needs a uint8 image, got {image.dtype.name}")
    return augment(image, tf.cast(seed, tf.int64))

  return _on_image(key, inkey, outkey, fn)


@register("resize")
def resize(size, method="bilinear", antialias=False, key="image", inkey=None,
           outkey=None):
  """Resizes to size (int or (h, w)); no antialias by default; keeps dtype."""
  size = _pair(size)
  return _on_image(key, inkey, outkey,
                   lambda im: _resize_keep_dtype(im, size, method, antialias))


@register("resize_small")
def resize_small(smaller_size, method="area", antialias=False, key="image",
                 inkey=None, outkey=None):
  """Resizes so that the smaller side equals smaller_size, keeping aspect."""
  if not isinstance(smaller_size, int) or isinstance(smaller_size, bool) or smaller_size <= 0:
    raise UserError(f"smaller_size must be a positive int, got {smaller_size!r}")

  def fn(image):
    shape = tf.shape(image)
    new_h, new_w = small_side_size(shape[0], shape[1], smaller_size)
    return _resize_keep_dtype(image, tf.stack([new_h, new_w]), method,
                              antialias)

  return _on_image(key, inkey, outkey, fn)


@register("central_crop")
def central_crop(crop_size=None, key="image", inkey=None, outkey=None):
  """Crops the central (h, w) window (None: the largest square); offsets round down."""
  size = None if crop_size is None else _pair(crop_size)

  def fn(image):
    shape = tf.shape(image)
    if size is None:
      ch = cw = tf.minimum(shape[0], shape[1])
    else:
      ch, cw = size
    top = (shape[0] - ch) // 2
    left = (shape[1] - cw) // 2
    return tf.image.crop_to_bounding_box(image, top, left, ch, cw)

  return _on_image(key, inkey, outkey, fn)


@register("value_range")
def value_range(vmin=-1, vmax=1, in_min=0, in_max=255.0, clip_values=False,
                key="image", inkey=None, outkey=None):
  """Linearly maps [in_min, in_max] (numbers or per-channel lists) to [vmin, vmax]; float32."""
  lo, n_lo = _channel_values(in_min, "in_min")
  hi, n_hi = _channel_values(in_max, "in_max")
  if n_lo is not None and n_hi is not None and n_lo != n_hi:
    raise UserError(f"in_min and in_max have {n_lo} and {n_hi} channels; give equal lengths")
  if n_lo is None and n_hi is None and lo == hi:
    raise UserError(f"in_min and in_max are both {lo}; the range must not be empty")
  channels = n_lo or n_hi

  def fn(image):
    if channels is not None and image.shape[-1] is not None and image.shape[-1] != channels:
      raise ValueError(f"value_range has {channels} per-channel values but the image has "
                       f"{image.shape[-1]} channels")
    image = tf.cast(image, tf.float32)
    image = (image - lo) / (hi - lo)
    image = vmin + image * (vmax - vmin)
    if clip_values:
      image = tf.clip_by_value(image, vmin, vmax)
    return image

  return _on_image(key, inkey, outkey, fn)


@register("onehot")
def onehot(depth, key="labels", key_result=None, multi=True, on=1.0, off=0.0):
  """One-hot (float32) encodes `key` into `key_result` (default: `key`).

  A rank-1 label (multi-label) turns every listed class on if `multi`.
  The default key is "labels" as in the reference; an example without
  "labels" but with "label" is read from "label" (and written there unless
  key_result is given), so strings written for this package's older default
  keep working.
  """
  if not isinstance(depth, int) or depth <= 0:
    raise UserError(f"depth must be a positive int, got {depth!r}")

  def fn(data):
    data = dict(data)
    src = key
    if key == "labels" and key not in data and "label" in data:
      src = "label"
    if src not in data:
      raise KeyError(f"onehot needs key {key!r}; example has {sorted(data)}")
    labels = tf.cast(data[src], tf.int32)
    if multi and labels.shape.rank == 1:
      # Every listed class is on; an empty list gives an all-`off` row (the
      # evaluator then skips the example, as ImageNet-ReaL needs).
      present = tf.minimum(tf.reduce_sum(tf.one_hot(labels, depth), axis=0), 1.0)
      hot = present * (float(on) - float(off)) + float(off)
    else:
      hot = tf.one_hot(labels, depth, on_value=float(on), off_value=float(off),
                       dtype=tf.float32)
    data[key_result or src] = hot
    return data

  return fn


@register("copy")
def copy(inkey, outkey):
  """Copies data[inkey] to data[outkey]."""

  def fn(data):
    data = dict(data)
    data[outkey] = data[inkey]
    return data

  return fn


@register("keep")
def keep(*keys):
  """Keeps only the given keys that the example has (as the reference)."""
  for k in keys:
    if not isinstance(k, str):
      raise UserError(f"keep() takes key names (str), got {k!r}")

  def fn(data):
    return {k: data[k] for k in keys if k in data}

  return fn
