"""Dataset resolution: counts, offline errors, class subsets (tfds and image folders)."""
import os

import numpy as np
import pytest

from flexivit_jax import data
from flexivit_jax.data import digits
from flexivit_jax.errors import UserError

EVAL_PP = 'decode|value_range(0, 1)|keep("image","label","index")'
FOLDER_PP = 'decode|resize(8)|keep("image","label","image/filename")'
ONE = dict(process_index=0, process_count=1)


def cfg(data_dir, split="train", **kw):
  return dict(name="sklearn_digits", split=split, data_dir=data_dir, **kw)


def examples(data_cfg, pp, batch_size=64):
  """Every example of one eval pass, in order, as a dict of arrays."""
  batches = list(data.eval_iterator(data_cfg, pp, batch_size, **ONE))
  mask = np.concatenate([b["_mask"] for b in batches])
  return {k: np.concatenate([b[k] for b in batches])[mask] for k in batches[0] if k != "_mask"}


def test_dataset_info_counts(digits_data_dir):
  n, info = data.dataset_info(cfg(digits_data_dir))
  assert n == digits.NUM_TRAIN == 1497
  assert data.dataset_info(cfg(digits_data_dir, "test"))[0] == 300
  assert info.features["label"].num_classes == 10
  assert data.num_eval_batches(cfg(digits_data_dir, "test"), 128) == 3


def test_missing_dataset_errors(tmp_path, digits_data_dir):
  empty = str(tmp_path / "empty")
  os.makedirs(empty)
  with pytest.raises(ValueError, match=r"'no_such_dataset_xyz'.*tfds build"):
    data.dataset_info({"name": "no_such_dataset_xyz", "split": "train",
                       "data_dir": empty})
  with pytest.raises(ValueError, match=r"'cifar10'.*not prepared.*tfds build"):
    data.train_iterator({"name": "cifar10", "split": "train",
                         "data_dir": empty}, "decode", 8, seed=0,
                        process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"'cifar10'"):
    data.dataset_info({"name": "cifar10", "split": "train",
                       "data_dir": empty, "streaming": True})
  assert os.listdir(empty) == [] or "downloads" not in os.listdir(empty)
  with pytest.raises(ValueError, match=r"array_record.*streaming=False"):
    data.train_iterator(cfg(digits_data_dir, streaming=True), "decode", 8, seed=0,
                        process_index=0, process_count=1)
  with pytest.raises(ValueError, match="does not exist"):
    data.dataset_info({"name": f"imagefolder:{tmp_path}/nope"})


def test_only_bundled_datasets_are_built(tmp_path):
  with pytest.raises(UserError, match=r"cluttered_digits.*sklearn_digits.*'cifar10'"):
    data.ensure_built("cifar10", str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_tfds_class_subset_keeps_those_classes_renumbered(digits_data_dir):
  full = examples(cfg(digits_data_dir, "test"), EVAL_PP)
  sub = examples(cfg(digits_data_dir, "test", classes=(7, 5)), EVAL_PP)
  keep = np.isin(full["label"], (7, 5))
  assert data.dataset_info(cfg(digits_data_dir, "test", classes=[7, 5]))[0] == keep.sum() > 0
  np.testing.assert_array_equal(sub["index"], full["index"][keep])  # split order kept
  np.testing.assert_array_equal(sub["image"], full["image"][keep])
  np.testing.assert_array_equal(sub["label"], np.where(full["label"][keep] == 7, 0, 1))


def test_folder_class_subset_keeps_those_classes_renumbered(image_folder):
  full = examples({"folder": image_folder, "split": "test"}, FOLDER_PP, 4)
  sub = examples({"folder": image_folder, "split": "test", "classes": (1,)}, FOLDER_PP, 4)
  dogs = full["label"] == 1
  assert sorted(full["label"]) == [0, 0, 0, 1, 1, 1]  # cat, dog
  np.testing.assert_array_equal(sub["image/filename"], full["image/filename"][dogs])
  np.testing.assert_array_equal(sub["image"], full["image"][dogs])
  np.testing.assert_array_equal(sub["label"], [0, 0, 0])


@pytest.mark.parametrize("classes", [(), (1, 1), (-1,), (True,), "5", (0.5,)])
def test_bad_classes_are_user_errors(image_folder, classes):
  with pytest.raises(UserError, match="distinct class indices"):
    data.dataset_info({"folder": image_folder, "classes": classes})


def test_class_subsets_need_random_access(image_folder):
  with pytest.raises(UserError, match="needs random access"):
    data.dataset_info({"folder": image_folder, "streaming": True, "classes": (0,)})
