"""Which examples a data config names: tfds datasets, image folders and class subsets.

A data config (dict or ConfigDict) has `name`, `split` (default `train`, tfds
split syntax allowed), `data_dir` (default `$FLEXIVIT_DATA_DIR`, else tfds'
default), optional `streaming`, `folder` and `classes`. Nothing is downloaded:
a dataset that is not prepared raises a `UserError` saying how to prepare it.

Random access (the default) needs the dataset stored as array_record
(`tfds.data_source`) or an image folder; datasets only prepared as tfrecord
fall back to streaming (`source` None), which data/streaming.py reads.

`classes=(c0, c1, ...)` keeps only the examples of those classes and renumbers
their labels to 0, 1, ... in that order (e.g. digits 5-9 become a 5-class
task); it is a random-access view (`ClassSubset`), so the data order contract
of data/order.py holds for it too.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from flexivit_jax import paths
from flexivit_jax.data import cluttered_digits, digits
from flexivit_jax.errors import UserError

_FOLDER_PREFIX = "imagefolder:"
LABEL_KEY = "label"  # the class label of tfds classification datasets and image folders
# The datasets built here offline on first use, by name.
BUNDLED = {digits.NAME: digits.SklearnDigits,
           cluttered_digits.NAME: cluttered_digits.ClutteredDigits}


def _get(cfg, key, default=None):
  if cfg is None:
    return default
  if isinstance(cfg, dict):
    return cfg.get(key, default)
  try:
    return cfg.get(key, default)  # ml_collections.ConfigDict
  except AttributeError:
    return getattr(cfg, key, default)


TFDS_HOME = "~/tensorflow_datasets"  # Where tfds itself looks when no data_dir is given.


def user_data_dir(explicit: str | None) -> str | None:
  """The data_dir a user asked for: `explicit`, else `$FLEXIVIT_DATA_DIR`, else None (tfds'
  own default); normalised, since tfds and orbax want absolute paths."""
  d = explicit or os.environ.get("FLEXIVIT_DATA_DIR")
  return paths.normalize(d) if d else None


def _data_dir(cfg) -> str | None:
  return user_data_dir(_get(cfg, "data_dir"))


def selection_key(data_cfg) -> tuple:
  """What in a data config decides its examples: equal keys, equal examples."""
  keys = ("name", "split", "streaming", "folder", "classes")
  return tuple(str(_get(data_cfg, k)) for k in keys) + (_data_dir(data_cfg),)


def _prepared_here(data_dir: str | None) -> list[str]:
  root = data_dir or os.path.expanduser(TFDS_HOME)
  try:
    return sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d))
                  and d not in ("downloads",))
  except OSError:
    return []


def _missing(name, split, data_dir, why) -> UserError:
  return UserError(
      f"Dataset {name!r} (split {split!r}) is not available in data_dir="
      f"{data_dir or '<tfds default>'}: {why}. Datasets present there: "
      f"{_prepared_here(data_dir)}. Nothing is downloaded at run time: prepare "
      f"it beforehand, e.g. `tfds build {name} --data_dir=DIR "
      f"--file_format=array_record` (manual_dir for ImageNet), or use the "
      f"bundled {' or '.join(map(repr, BUNDLED))}, or 'imagefolder:/path/to/root'.")


def _skip_image_decoding(features) -> dict:
  """Leaves top-level images encoded: the `decode*` pp ops decode them."""
  try:
    items = features.items()
  except AttributeError:
    return {}
  return {k: tfds.decode.SkipDecoding() for k, f in items
          if isinstance(f, tfds.features.Image)}


class FolderSource:
  """Random access over an ImageFolder split: file paths and label ids."""

  def __init__(self, builder, split):
    examples = builder._split_examples[split]  # pylint: disable=protected-access
    str2int = builder.info.features[LABEL_KEY].str2int
    self.paths = [ex.image_path for ex in examples]
    self.labels = np.array([str2int(ex.label) for ex in examples], np.int64)

  def __len__(self):
    return len(self.paths)


@dataclasses.dataclass(frozen=True)
class ClassSubset:
  """The examples of some classes of a random-access source, labels renumbered 0..k-1.

  Example i of the subset is example `indices[i]` of `source`, with label `labels[i]`.
  """
  source: Any
  indices: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.indices)


@dataclasses.dataclass
class Dataset:
  """An opened split: its tfds info and builder, and a random-access source unless streaming."""
  name: str
  split: str
  data_dir: str | None
  info: Any
  builder: Any
  source: Any | None  # random-access source, None in streaming mode
  num_examples: int | None = None

  @property
  def streaming(self):
    return self.source is None

  @property
  def is_image_folder(self):
    return isinstance(self.builder, tfds.folder_dataset.ImageFolder)

  def as_dataset(self, split, shuffle_files=False, seed=None):
    """The split as tf.data (streaming), images left encoded."""
    # Images stay encoded until the pp's `decode`: shuffle buffers hold
    # bytes, and decoding runs in the pp's parallel map.
    kw = {"decoders": _skip_image_decoding(self.info.features)}
    if not self.is_image_folder:
      kw["read_config"] = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    try:
      return self.builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                     **kw)
    except NotImplementedError as e:
      if "ArrayRecord" in str(e):
        raise UserError(
            f"Dataset {self.name!r} is stored as array_record, which tf.data "
            f"streaming cannot read: use the random-access pipeline "
            f"(streaming=False), which is the default.") from e
      raise _missing(self.name, split, self.data_dir,
                     f"{type(e).__name__}: {e}") from e
    except Exception as e:  # pylint: disable=broad-except
      raise _missing(self.name, split, self.data_dir,
                     f"{type(e).__name__}: {e}") from e

  def count(self) -> int:
    if self.num_examples is None:
      if self.source is not None:
        self.num_examples = len(self.source)
      else:
        try:
          self.num_examples = int(self.info.splits[self.split].num_examples)
        except Exception:  # pylint: disable=broad-except
          n = int(self.as_dataset(self.split).cardinality())
          if n < 0:
            raise UserError(f"Cannot count examples of {self.name}:"
                             f"{self.split}") from None
          self.num_examples = n
    return self.num_examples


_SUBSETS: dict = {}  # (name, split, data_dir, classes) -> ClassSubset: one label scan each.


def _parse_classes(classes) -> tuple[int, ...]:
  ok = isinstance(classes, (list, tuple)) and classes and all(
      isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in classes)
  if not ok or len(set(classes)) != len(classes):
    raise UserError(f"data config classes={classes!r} must be a non-empty sequence of "
                     "distinct class indices (ints >= 0), e.g. (5, 6, 7, 8, 9)")
  return tuple(int(c) for c in classes)


def _labels(source) -> np.ndarray:
  """The label of every example: an image folder knows them, other sources are read once."""
  if isinstance(source, FolderSource):
    return source.labels
  return np.asarray([int(source[i][LABEL_KEY]) for i in range(len(source))])


def _class_subset(source, classes: tuple[int, ...]) -> ClassSubset:
  new_label = {c: i for i, c in enumerate(classes)}
  labels = _labels(source)
  keep = np.flatnonzero(np.isin(labels, classes))
  return ClassSubset(source, keep.astype(np.int64),
                     np.array([new_label[int(labels[i])] for i in keep], np.int64))


def _restrict_classes(ds: Dataset, classes) -> Dataset:
  """The dataset seen through a `ClassSubset` (random access only)."""
  classes = _parse_classes(classes)
  if ds.streaming:
    raise UserError(f"data config classes={classes} needs random access (array_record); "
                     f"{ds.name} is read by streaming here")
  key = (ds.name, ds.split, ds.data_dir, classes)
  if key not in _SUBSETS:
    _SUBSETS[key] = _class_subset(ds.source, classes)
  return dataclasses.replace(ds, source=_SUBSETS[key], num_examples=None)


def open_dataset(data_cfg) -> Dataset:
  """The split a data config names, restricted to its `classes` if it has them."""
  ds = _open_split(data_cfg)
  classes = _get(data_cfg, "classes")
  return ds if classes is None else _restrict_classes(ds, classes)


def _open_split(data_cfg) -> Dataset:
  name = _get(data_cfg, "name")
  split = _get(data_cfg, "split", "train")
  data_dir = _data_dir(data_cfg)
  streaming = bool(_get(data_cfg, "streaming", False))
  if not name and not _get(data_cfg, "folder"):
    raise UserError(f"data config needs a `name` (got {data_cfg!r})")

  folder = _get(data_cfg, "folder")
  if folder is None and name.startswith(_FOLDER_PREFIX):
    folder = name[len(_FOLDER_PREFIX):]
  if folder is not None:
    return _open_folder(name, split, paths.normalize(folder), streaming)

  if name.split(":")[0].split("/")[0] in BUNDLED:
    data_dir = ensure_built(name.split(":")[0], data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _missing(name, split, data_dir,
                   "no such tfds dataset is registered or stored there") from e
  except Exception as e:  # pylint: disable=broad-except
    raise _missing(name, split, data_dir, f"{type(e).__name__}: {e}") from e

  src = None
  if not streaming:
    try:
      src = tfds.data_source(
          name, split=split, data_dir=data_dir, download=False, try_gcs=False,
          decoders=_skip_image_decoding(builder.info.features))
    except Exception as e:  # pylint: disable=broad-except
      if not builder.is_prepared():
        raise _missing(name, split, data_dir, "it is not prepared") from e
      logging.warning(
          "Dataset %s is not stored as array_record (%s): falling back to "
          "streaming tf.data, which is NOT process-count invariant.", name, e)
  return Dataset(name, split, data_dir, builder.info, builder, src)


def ensure_built(name: str = digits.NAME, data_dir: str | None = None) -> str:
  """Builds a bundled dataset (array_record) into data_dir once; returns data_dir.

  `name` is a key of `BUNDLED`, optionally with a builder config
  (`cluttered_digits/small`). A no-op when already prepared. data_dir defaults
  to `$FLEXIVIT_DATA_DIR`, else `~/tensorflow_datasets`.
  """
  base, _, config = name.partition("/")
  if base not in BUNDLED:
    raise UserError(f"ensure_built only builds the bundled datasets {sorted(BUNDLED)}, "
                     f"not {name!r}")
  data_dir = user_data_dir(data_dir) or paths.normalize(TFDS_HOME)
  builder = BUNDLED[base](data_dir=data_dir, file_format="array_record", config=config or None)
  if not builder.is_prepared():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, manual_dir=None))
  return data_dir


def _open_folder(name, split, folder, streaming) -> Dataset:
  if not os.path.isdir(folder):
    raise UserError(f"Image folder {folder!r} does not exist (expected "
                     f"{folder}/<split>/<label>/<image files>)")
  builder = tfds.folder_dataset.ImageFolder(folder)
  if split not in builder.info.splits:
    raise UserError(f"Image folder {folder!r} has no split {split!r}; it "
                     f"has {list(builder.info.splits)} (sub-splits are not "
                     f"supported for image folders)")
  src = None if streaming else FolderSource(builder, split)
  return Dataset(name or f"{_FOLDER_PREFIX}{folder}", split, folder,
                 builder.info, builder, src)


def dataset_info(data_cfg) -> tuple[int, Any]:
  """Returns (number of examples in data_cfg.split, tfds DatasetInfo)."""
  ds = open_dataset(data_cfg)
  return ds.count(), ds.info


def num_eval_batches(data_cfg, global_batch_size: int) -> int:
  """Number of (padded) global batches of one eval pass."""
  n, _ = dataset_info(data_cfg)
  return max(1, math.ceil(n / global_batch_size))
