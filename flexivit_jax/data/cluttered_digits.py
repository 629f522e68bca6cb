"""`cluttered_digits`: a bundled, offline benchmark where image resolution matters.

The classic cluttered-MNIST task made from scikit-learn's 8x8 digits, so that a
finer patch grid sees detail a coarse one blurs away. Each example is a 64x64
uint8 RGB canvas (grey: the 3 channels are equal) holding:

  * a low-contrast background texture: a random 64x64 crop of scikit-image's
    `grass`, `gravel` or `brick` photo, scaled to 0..`TEXTURE_MAX`;
  * several distractor fragments: random crops (`FRAGMENT_FRACTION` of the
    digit's side) of OTHER digits of the same split, drawn at the target's scale,
    so they have the same stroke width as the target and no class of their own;
  * the target digit, bilinearly upscaled from 8x8 to `SCALES` px and placed at
    a random position; its class is the label.

Layers combine by per-pixel maximum (ink is bright on a dark ground), so the
target digit's pixels are never darkened by clutter.

Features: `image` uint8 (64, 64, 3); `label` ClassLabel(10); `mask` uint8
(64, 64, 1): 1 + label on every pixel where the placed target digit is
non-zero, 0 everywhere else (texture and distractor pixels are background);
`index` the target's row in `sklearn.datasets.load_digits()`; `box` int64
(top, left, side) of the target on the canvas.

Splits use the same source digits as `sklearn_digits` (data/digits.py): `train`
is drawn from its 1,497 train digits, `test` from its 300 test digits, so no
digit instance (as target or as fragment) is in both. Classes are exactly
uniform: example i has class i % 10; the k-th example of a class uses that
class's source digits in a fixed shuffled order, cycling. Each example's
placement comes from its own generator seeded with (`_SEED`, split, i), so the
bytes do not depend on build order or machine. Builder configs: `default`
(6,000 train / 1,000 test) and `small` (200 / 100, for tests).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from flexivit_jax.data import digits

NAME = "cluttered_digits"
CANVAS = 64
SCALES = (12, 21)  # Side of the placed digit in px: integers in [12, 21).
NUM_FRAGMENTS = (4, 9)  # Distractors per example: integers in [4, 9).
FRAGMENT_FRACTION = (0.35, 0.6)  # A fragment's side as a fraction of the digit's side.
TEXTURE_MAX = 40  # Brightest background pixel; digit ink reaches 255.
TEXTURES = ("grass", "gravel", "brick")  # scikit-image sample photos, bundled with it.
_SEED = 21
_SPLIT_CODES = {"train": 0, "test": 1}
_MIN_FRAGMENT_INK = 128  # A fragment crop must reach this brightness, else it is redrawn.


@dataclasses.dataclass
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
  """How many examples each split holds."""
  num_train: int = 6000
  num_test: int = 1000


def upscale(digit: np.ndarray, side: int) -> np.ndarray:
  """A (h, w) uint8 image resized bilinearly to (side, side), half-pixel centres, uint8.

  Plain float64 numpy, so the result is the same on every machine.
  """
  def axis(n):
    pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    return lo, np.minimum(lo + 1, n - 1), pos - lo

  y0, y1, wy = axis(digit.shape[0])
  x0, x1, wx = axis(digit.shape[1])
  d = digit.astype(np.float64)
  rows = d[y0] * (1 - wy)[:, None] + d[y1] * wy[:, None]
  out = rows[:, x0] * (1 - wx) + rows[:, x1] * wx
  return np.round(out).clip(0, 255).astype(np.uint8)


def load_textures() -> list[np.ndarray]:
  """The background photos as uint8 (512, 512), dimmed to 0..TEXTURE_MAX."""
  import skimage.data  # local: only building needs it
  return [np.round(getattr(skimage.data, n)().astype(np.float64) * TEXTURE_MAX / 255)
          .astype(np.uint8) for n in TEXTURES]


class ExampleMaker:
  """Makes the examples of one split from its source digits: `make(i)` is example i."""

  def __init__(self, split: str):
    images, labels = digits.load_arrays()
    self.split = split
    self.images = images[..., 0]  # Grey (N, 8, 8): the channels are equal.
    self.labels = labels
    self.sources = digits.split_indices()[split]
    order = np.random.default_rng([_SEED, _SPLIT_CODES[split]])
    self.by_class = [order.permutation(self.sources[labels[self.sources] == c])
                     for c in range(10)]
    self.textures = load_textures()

  def _fragment(self, rng, target_index: int, side: int) -> np.ndarray:
    """A crop of another digit of the split, drawn at the target's scale."""
    while True:
      other = int(rng.choice(self.sources))
      if other == target_index:
        continue
      h, w = (np.round(rng.uniform(*FRAGMENT_FRACTION, size=2) * side)).astype(int)
      top, left = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
      crop = upscale(self.images[other], side)[top:top + h, left:left + w]
      if crop.max() >= _MIN_FRAGMENT_INK:
        return crop

  def make(self, i: int) -> dict:
    rng = np.random.default_rng([_SEED, _SPLIT_CODES[self.split], i])
    label = i % 10
    pool = self.by_class[label]
    index = int(pool[(i // 10) % len(pool)])

    texture = self.textures[rng.integers(len(self.textures))]
    y, x = rng.integers(0, texture.shape[0] - CANVAS + 1, size=2)
    canvas = texture[y:y + CANVAS, x:x + CANVAS].copy()

    side = int(rng.integers(*SCALES))
    for _ in range(rng.integers(*NUM_FRAGMENTS)):
      frag = self._fragment(rng, index, side)
      fy = rng.integers(0, CANVAS - frag.shape[0] + 1)
      fx = rng.integers(0, CANVAS - frag.shape[1] + 1)
      region = canvas[fy:fy + frag.shape[0], fx:fx + frag.shape[1]]
      np.maximum(region, frag, out=region)

    digit = upscale(self.images[index], side)
    top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
    region = canvas[top:top + side, left:left + side]
    np.maximum(region, digit, out=region)
    mask = np.zeros((CANVAS, CANVAS, 1), np.uint8)
    mask[top:top + side, left:left + side, 0] = np.where(digit > 0, label + 1, 0)
    return {"image": np.repeat(canvas[..., None], 3, axis=-1), "label": label,
            "mask": mask, "index": index, "box": np.array([top, left, side], np.int64)}


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
  """One sklearn digit among distractor fragments on a 64x64 textured canvas; 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ClutteredDigitsConfig(name="default", description="6,000 train / 1,000 test"),
      ClutteredDigitsConfig(name="small", description="200 train / 100 test, for tests",
                            num_train=200, num_test=100),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(CANVAS, CANVAS, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "mask": tfds.features.Tensor(shape=(CANVAS, CANVAS, 1), dtype=np.uint8,
                                         encoding=tfds.features.Encoding.ZLIB),
            "index": np.int64,
            "box": tfds.features.Tensor(shape=(3,), dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    sizes = {"train": self.builder_config.num_train, "test": self.builder_config.num_test}
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split, num_examples):
    maker = ExampleMaker(split)
    for i in range(num_examples):
      yield i, maker.make(i)
