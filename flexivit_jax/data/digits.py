"""`sklearn_digits`: a real, tiny, fully offline image dataset as a tfds builder.

The 1,797 8x8 handwritten digits bundled with scikit-learn
(`sklearn.datasets.load_digits`, no download). Pixel values 0..16 are mapped to
0..255 (round(v * 255 / 16)) and replicated to 3 channels -> uint8 (8, 8, 3).
Split: a fixed permutation `np.random.default_rng(0).permutation(1797)`; its
first 1,497 indices form `train`, the last 300 `test` (each split is stored in
ascending original-index order). Stored as array_record so that
`tfds.data_source` random access works.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NAME = "sklearn_digits"
NUM_TRAIN = 1497
NUM_TEST = 300
_SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
  """Original sklearn indices of each split (sorted)."""
  perm = np.random.default_rng(_SPLIT_SEED).permutation(NUM_TRAIN + NUM_TEST)
  return {"train": np.sort(perm[:NUM_TRAIN]), "test": np.sort(perm[NUM_TRAIN:])}


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 images as uint8 (N, 8, 8, 3) and labels int64 (N,)."""
  from sklearn.datasets import load_digits  # local: sklearn is slow to import
  d = load_digits()
  images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  images = np.repeat(images[..., None], 3, axis=-1)
  return images, d.target.astype(np.int64)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (UCI optdigits test set), 10 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": np.int64,  # index into sklearn's load_digits() arrays
        }),
        supervised_keys=("image", "label"),
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {name: self._generate_examples(idx)
            for name, idx in split_indices().items()}

  def _generate_examples(self, indices):
    images, labels = load_arrays()
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i]),
                     "index": int(i)}
