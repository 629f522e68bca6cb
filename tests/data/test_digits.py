"""The bundled `sklearn_digits` dataset: built offline once, the same examples as sklearn's."""
import os

import numpy as np
import tensorflow_datasets as tfds

from flexivit_jax.data import digits, sources


def test_build_is_reused(digits_data_dir):
  stamp = os.path.getmtime(os.path.join(digits_data_dir, "sklearn_digits", "1.0.0"))
  sources.ensure_built(data_dir=digits_data_dir)
  assert os.path.getmtime(
      os.path.join(digits_data_dir, "sklearn_digits", "1.0.0")) == stamp


def test_digits_content_matches_sklearn(digits_data_dir):
  images, labels = digits.load_arrays()
  src = tfds.data_source("sklearn_digits", split="test", data_dir=digits_data_dir,
                         download=False, try_gcs=False)
  idx = sorted(int(src[i]["index"]) for i in range(len(src)))
  np.testing.assert_array_equal(idx, digits.split_indices()["test"])
  for i in range(0, 300, 37):
    ex = src[i]
    np.testing.assert_array_equal(ex["image"], images[ex["index"]])
    assert ex["label"] == labels[ex["index"]]
