"""RandAugment in TF ops, with the operations and magnitudes of the reference.

big_vision's `randaug(num_layers, magnitude)` (its archived TF1 port of the
tensorflow/tpu RandAugment) applies `num_layers` times one operation drawn
uniformly from the 16 below, always at the same `magnitude`, on uint8 images.
Levels are scaled by `MAX_LEVEL = 10`; translations use 100 px, cutout 40 px,
and pixels left empty by geometric ops are filled with 128.

The reference draws from TF's global random state; here every draw comes from
a stateless seed, so an example's augmentation depends only on its seed. Runs
eagerly and inside tf.data (no tensorflow_addons: the geometric ops call the
same projective-transform kernel it used).
"""
from __future__ import annotations

import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
CUTOUT_CONST = 40
TRANSLATE_CONST = 100

OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize",
            "Solarize", "Color", "Contrast", "Brightness", "Sharpness",
            "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout",
            "SolarizeAdd")


# ---------------------------------------------------------------------------
# Pixel ops (uint8 [h, w, 3] -> uint8 [h, w, 3]).


def blend(image1, image2, factor: float):
  """image1 + factor * (image2 - image1); truncates inside [0, 1], else clips."""
  if factor == 0.0:
    return tf.convert_to_tensor(image1)
  if factor == 1.0:
    return tf.convert_to_tensor(image2)
  a = tf.cast(image1, tf.float32)
  out = a + factor * (tf.cast(image2, tf.float32) - a)
  if 0.0 < factor < 1.0:
    return tf.cast(out, tf.uint8)
  return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _gray(image):
  return tf.image.rgb_to_grayscale(image)


def color(image, factor):
  return blend(tf.image.grayscale_to_rgb(_gray(image)), image, factor)


def contrast(image, factor):
  """Blends towards the mean grey level (a histogram mean, as the reference)."""
  gray = tf.cast(_gray(image), tf.int32)
  hist = tf.histogram_fixed_width(gray, [0, 255], nbins=256)
  pixels = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
  mean = tf.reduce_sum(tf.cast(hist, tf.float32) * tf.linspace(0.0, 255.0, 256)) / pixels
  degenerate = tf.clip_by_value(tf.ones_like(gray, tf.float32) * mean, 0.0, 255.0)
  return blend(tf.image.grayscale_to_rgb(tf.cast(degenerate, tf.uint8)), image, factor)


def brightness(image, factor):
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """Blends with PIL's SMOOTH filter result (borders keep the original)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel,
                                  [1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  inner = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
  smooth = tf.where(tf.equal(inner, 1), tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return blend(smooth, image, factor)


def posterize(image, bits: int):
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image, threshold: int):
  # The reference compares uint8 pixels with a python int; TF converts it to
  # uint8, so threshold 256 (magnitude 10) wraps to 0 and inverts every pixel.
  return tf.where(image < (threshold % 256), image, 255 - image)


def solarize_add(image, addition: int, threshold: int = 128):
  added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int64) + addition, 0, 255), tf.uint8)
  return tf.where(image < threshold, added, image)


def invert(image):
  return 255 - image


def _per_channel(fn, image):
  return tf.stack([fn(image[:, :, c]) for c in range(3)], axis=2)


def _autocontrast_channel(channel):
  lo = tf.cast(tf.reduce_min(channel), tf.float32)
  hi = tf.cast(tf.reduce_max(channel), tf.float32)

  def scaled():
    scale = 255.0 / (hi - lo)
    out = tf.cast(channel, tf.float32) * scale - lo * scale
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)

  return tf.cond(hi > lo, scaled, lambda: channel)


def autocontrast(image):
  return _per_channel(_autocontrast_channel, image)


def _equalize_channel(channel):
  im = tf.cast(channel, tf.int32)
  hist = tf.histogram_fixed_width(im, [0, 255], nbins=256)
  nonzero = tf.boolean_mask(hist, hist != 0)
  step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

  def equalized():
    lut = (tf.cumsum(hist) + step // 2) // step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.gather(lut, im)

  return tf.cast(tf.cond(tf.equal(step, 0), lambda: im, equalized), tf.uint8)


def equalize(image):
  return _per_channel(_equalize_channel, image)


def _transform(image, transform):
  """Projective transform (output -> input map, nearest), empty pixels -> 128."""
  shape = tf.shape(image)
  wrapped = tf.concat([image, tf.ones([shape[0], shape[1], 1], image.dtype)], 2)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=wrapped[None], transforms=tf.cast(tf.reshape(transform, [1, 8]), tf.float32),
      output_shape=shape[:2], fill_value=0.0, interpolation="NEAREST",
      fill_mode="CONSTANT")[0]
  empty = tf.equal(out[:, :, 3:], 0)
  return tf.where(empty, tf.constant(FILL_VALUE, image.dtype), out[:, :, :3])


def rotate(image, degrees):
  """Rotates counter-clockwise by `degrees` about the image centre."""
  rad = degrees * (math.pi / 180.0)
  h = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
  w = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
  cos, sin = tf.cos(rad), tf.sin(rad)
  x_off = (w - (cos * w - sin * h)) / 2.0
  y_off = (h - (sin * w + cos * h)) / 2.0
  return _transform(image, tf.stack([cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0]))


def translate_x(image, pixels):
  return _transform(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]))


def translate_y(image, pixels):
  return _transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))


def shear_x(image, level):
  return _transform(image, tf.stack([1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))


def shear_y(image, level):
  return _transform(image, tf.stack([1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]))


def cutout(image, pad_size: int, seed):
  """Fills a (2*pad_size)^2 box around a uniform random centre with 128."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  seed_h, seed_w = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  ch = tf.random.stateless_uniform([], seed_h, minval=0, maxval=h, dtype=tf.int32)
  cw = tf.random.stateless_uniform([], seed_w, minval=0, maxval=w, dtype=tf.int32)
  rows = tf.range(h)[:, None, None]
  cols = tf.range(w)[None, :, None]
  inside = ((rows >= ch - pad_size) & (rows < ch + pad_size) &
            (cols >= cw - pad_size) & (cols < cw + pad_size))
  return tf.where(inside, tf.constant(FILL_VALUE, image.dtype), image)


# ---------------------------------------------------------------------------
# Magnitude -> argument, and the op table.


def _random_sign(value: float, seed):
  """+value or -value with probability 1/2 each."""
  keep = tf.random.stateless_uniform([], seed) + 0.5 >= 1.0
  return tf.where(keep, tf.constant(value, tf.float32), tf.constant(-value, tf.float32))


def _enhance(level):
  return (level / MAX_LEVEL) * 1.8 + 0.1


def op_table(magnitude: float):
  """name -> fn(image, seed): every op at this magnitude (seed: its randomness)."""
  m = float(magnitude)
  enhance = _enhance(m)
  return {
      "AutoContrast": lambda im, s: autocontrast(im),
      "Equalize": lambda im, s: equalize(im),
      "Invert": lambda im, s: invert(im),
      "Rotate": lambda im, s: rotate(im, _random_sign(m / MAX_LEVEL * 30.0, s)),
      "Posterize": lambda im, s: posterize(im, int(m / MAX_LEVEL * 4)),
      "Solarize": lambda im, s: solarize(im, int(m / MAX_LEVEL * 256)),
      "Color": lambda im, s: color(im, enhance),
      "Contrast": lambda im, s: contrast(im, enhance),
      "Brightness": lambda im, s: brightness(im, enhance),
      "Sharpness": lambda im, s: sharpness(im, enhance),
      "ShearX": lambda im, s: shear_x(im, _random_sign(m / MAX_LEVEL * 0.3, s)),
      "ShearY": lambda im, s: shear_y(im, _random_sign(m / MAX_LEVEL * 0.3, s)),
      "TranslateX": lambda im, s: translate_x(
          im, _random_sign(m / MAX_LEVEL * TRANSLATE_CONST, s)),
      "TranslateY": lambda im, s: translate_y(
          im, _random_sign(m / MAX_LEVEL * TRANSLATE_CONST, s)),
      "Cutout": lambda im, s: cutout(im, int(m / MAX_LEVEL * CUTOUT_CONST), s),
      "SolarizeAdd": lambda im, s: solarize_add(im, int(m / MAX_LEVEL * 110)),
  }


def randaugment(image, num_layers: int, magnitude: float, seed):
  """Applies `num_layers` ops, each drawn uniformly from OP_NAMES; uint8 in/out."""
  table = op_table(magnitude)
  image = tf.convert_to_tensor(image)
  image.set_shape([None, None, 3])
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2 * max(num_layers, 1))
  for layer in range(num_layers):
    pick = tf.random.stateless_uniform([], seeds[2 * layer], minval=0,
                                       maxval=len(OP_NAMES), dtype=tf.int32)
    op_seed = seeds[2 * layer + 1]
    branches = [lambda fn=table[name], im=image: fn(im, op_seed) for name in OP_NAMES]
    image = tf.switch_case(pick, branches)
    image.set_shape([None, None, 3])
  return image
