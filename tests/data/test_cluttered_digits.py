"""The bundled `cluttered_digits` dataset: reproducible bytes, masks that match the images,
balanced classes, disjoint splits, and the pipeline reads it. Uses the `small` config."""
import glob
import itertools
import os

import numpy as np
import tensorflow_datasets as tfds

from conftest import CLUTTERED_SMALL as SMALL
from flexivit_jax import data
from flexivit_jax.data import cluttered_digits, digits, sources

PP = ('decode|value_range(-1, 1)|onehot(10, key="label", key_result="labels")|'
      'keep("image", "labels")')


def read_split(data_dir, split):
  src = tfds.data_source(SMALL, split=split, data_dir=data_dir, download=False, try_gcs=False)
  return [src[i] for i in range(len(src))]


def test_two_builds_store_identical_bytes(cluttered_small_dir, tmp_path):
  again = sources.ensure_built(SMALL, str(tmp_path))

  def records(root):
    files = sorted(glob.glob(os.path.join(root, "cluttered_digits", "small", "1.0.0",
                                          "*.array_record*")))
    return {os.path.basename(f): open(f, "rb").read() for f in files}

  first = records(cluttered_small_dir)
  assert len(first) == 2  # train and test
  assert records(again) == first


def test_examples_do_not_depend_on_build_order():
  forward = cluttered_digits.ExampleMaker("test")
  backward = cluttered_digits.ExampleMaker("test")
  late = [backward.make(i) for i in reversed(range(30))][::-1]
  for i, b in enumerate(late):
    a = forward.make(i)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_masks_mark_exactly_the_target_digit(cluttered_small_dir):
  grey, _ = digits.load_arrays()
  for ex in read_split(cluttered_small_dir, "test"):
    image, mask, label = ex["image"], ex["mask"][..., 0], int(ex["label"])
    assert image.shape == (64, 64, 3) and ex["mask"].shape == (64, 64, 1)
    assert (image == image[..., :1]).all()  # grey
    top, left, side = (int(v) for v in ex["box"])
    placed = np.zeros((64, 64), np.uint8)
    placed[top:top + side, left:left + side] = cluttered_digits.upscale(
        grey[ex["index"], ..., 0], side)
    np.testing.assert_array_equal(mask, np.where(placed > 0, label + 1, 0))
    assert (image[..., 0] >= placed).all()  # clutter never darkens the digit
    assert image[..., 0][mask == 0].max() > 0  # texture and fragments are there
    assert set(np.unique(mask)) == {0, label + 1}


def test_classes_uniform_and_splits_disjoint(cluttered_small_dir):
  train, test = read_split(cluttered_small_dir, "train"), read_split(cluttered_small_dir, "test")
  assert (len(train), len(test)) == (200, 100)
  for split, n in ((train, 20), (test, 10)):
    assert np.bincount([int(ex["label"]) for ex in split], minlength=10).tolist() == [n] * 10
  sources_of = digits.split_indices()
  assert {int(ex["index"]) for ex in train} <= set(sources_of["train"].tolist())
  assert {int(ex["index"]) for ex in test} <= set(sources_of["test"].tolist())
  # Several placements of each source digit, not one digit repeated.
  assert len({int(ex["index"]) for ex in train}) == 200


def test_pipeline_reads_it(cluttered_small_dir):
  it = data.train_iterator(dict(name=SMALL, split="train", data_dir=cluttered_small_dir), PP, 8, seed=0)
  batches = list(itertools.islice(it, 2))
  it.close()
  for b in batches:
    assert b["image"].shape == (8, 64, 64, 3) and b["labels"].shape == (8, 10)
    assert -1 <= b["image"].min() and b["image"].max() <= 1
  evals = list(data.eval_iterator(dict(name=SMALL, split="test", data_dir=cluttered_small_dir), PP, 32))
  assert sum(int(b[data.MASK_KEY].sum()) for b in evals) == 100
