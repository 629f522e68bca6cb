"""Deterministic, process-count-invariant input pipelines.

Random-access mode (default): examples are read with `tfds.data_source`
(array_record) by index, inside a tf.data pipeline (Python picks the indices,
tf.data's threads read, parse and preprocess them outside the GIL). The order of training examples is a pure function of
(seed, step): epoch e is the permutation `np.random.default_rng([seed, e])` of
all example indices; global batch k holds positions k*B .. (k+1)*B - 1 of the
concatenated epoch streams, and process p of P reads (only) the contiguous
slice p*B/P .. (p+1)*B/P - 1 of it. Preprocessing randomness is seeded per
example from (seed, epoch, example index). Hence a global batch does not
depend on the number of processes, and restarting at `start_step=k` continues
exactly with batch k without replaying anything.

`data_cfg.classes=(c0, c1, ...)` keeps only the examples of those classes and
renumbers their labels to 0, 1, ... in that order (e.g. digits 5-9 become a
5-class task); it is a random-access view, so all of the above still holds.

Streaming mode (`data_cfg.streaming=True`, or automatic for datasets that are
only prepared as tfrecord): tf.data over `tfds.even_splits(split, P)[p]`. It
is NOT process-count invariant and restarts reshuffle instead of resuming.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import math
import os
import threading
from typing import Any, Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flexivit_jax import paths
from flexivit_jax.data import digits
from flexivit_jax.data import preprocess
from flexivit_jax.errors import UserError

_FOLDER_PREFIX = "imagefolder:"
MASK_KEY = "_mask"


# ---------------------------------------------------------------------------
# Config / dataset resolution.
# ---------------------------------------------------------------------------


def _get(cfg, key, default=None):
  if cfg is None:
    return default
  if isinstance(cfg, dict):
    return cfg.get(key, default)
  try:
    return cfg.get(key, default)  # ml_collections.ConfigDict
  except AttributeError:
    return getattr(cfg, key, default)


def _data_dir(cfg) -> str | None:
  d = _get(cfg, "data_dir") or os.environ.get("FLEXIVIT_DATA_DIR")
  return paths.normalize(d) if d else None


def _process(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in "
                     f"[0, process_count={process_count})")
  return int(process_index), int(process_count)


def _local_batch(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise UserError(
        f"global_batch_size={global_batch_size} must be a positive multiple of "
        f"process_count={process_count}")
  return global_batch_size // process_count


def _prepared_here(data_dir: str | None) -> list[str]:
  root = data_dir or os.path.expanduser("~/tensorflow_datasets")
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
      f"bundled 'sklearn_digits', or 'imagefolder:/path/to/root'.")


def _skip_image_decoding(features) -> dict:
  """Leaves top-level images encoded: the `decode*` pp ops decode them."""
  try:
    items = features.items()
  except AttributeError:
    return {}
  return {k: tfds.decode.SkipDecoding() for k, f in items
          if isinstance(f, tfds.features.Image)}


class _FolderSource:
  """Random access over an ImageFolder split: file paths and label ids."""

  def __init__(self, builder, split):
    examples = builder._split_examples[split]  # pylint: disable=protected-access
    str2int = builder.info.features["label"].str2int
    self.paths = [ex.image_path for ex in examples]
    self.labels = np.array([str2int(ex.label) for ex in examples], np.int64)

  def __len__(self):
    return len(self.paths)


@dataclasses.dataclass
class _Dataset:
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

  def as_dataset(self, split, shuffle_files=False, seed=None):
    # Images stay encoded until the pp's `decode`: shuffle buffers hold
    # bytes, and decoding runs in the pp's parallel map.
    kw = {"decoders": _skip_image_decoding(self.info.features)}
    if not isinstance(self.builder, tfds.folder_dataset.ImageFolder):
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


class _ClassSubset:
  """Random access to the examples of some classes, labels renumbered 0..k-1."""

  def __init__(self, source, classes, label_key="label"):
    self._source, self._label_key = source, label_key
    self._new_label = {int(c): i for i, c in enumerate(classes)}
    labels = np.asarray([int(source[i][label_key]) for i in range(len(source))])
    self._indices = np.flatnonzero(np.isin(labels, list(self._new_label)))

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    ex = dict(self._source[int(self._indices[int(i)])])
    ex[self._label_key] = np.int64(self._new_label[int(ex[self._label_key])])
    return ex


_SUBSETS: dict = {}  # (name, split, data_dir, classes) -> _ClassSubset: one label scan each.


def _parse_classes(classes) -> tuple[int, ...]:
  ok = isinstance(classes, (list, tuple)) and classes and all(
      isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0 for c in classes)
  if not ok or len(set(classes)) != len(classes):
    raise UserError(f"data config classes={classes!r} must be a non-empty sequence of "
                     "distinct class indices (ints >= 0), e.g. (5, 6, 7, 8, 9)")
  return tuple(int(c) for c in classes)


def _folder_subset(src: "_FolderSource", classes) -> "_FolderSource":
  """An image folder's files of `classes`, labels renumbered in that order."""
  new_label = {c: i for i, c in enumerate(classes)}
  keep = [i for i, label in enumerate(src.labels) if int(label) in new_label]
  sub = copy.copy(src)
  sub.paths = [src.paths[i] for i in keep]
  sub.labels = np.array([new_label[int(src.labels[i])] for i in keep], np.int64)
  return sub


def _restrict_classes(ds: _Dataset, classes) -> _Dataset:
  """The dataset seen through `_ClassSubset` (random access only)."""
  classes = _parse_classes(classes)
  if ds.streaming:
    raise UserError(f"data config classes={classes} needs random access (array_record); "
                     f"{ds.name} is read by streaming here")
  key = (ds.name, ds.split, ds.data_dir, classes)
  if key not in _SUBSETS and isinstance(ds.source, _FolderSource):
    _SUBSETS[key] = _folder_subset(ds.source, classes)
  elif key not in _SUBSETS:
    _SUBSETS[key] = _ClassSubset(ds.source, classes)
  return dataclasses.replace(ds, source=_SUBSETS[key], num_examples=None)


def _open(data_cfg) -> _Dataset:
  ds = _open_all(data_cfg)
  classes = _get(data_cfg, "classes")
  return ds if classes is None else _restrict_classes(ds, classes)


def _open_all(data_cfg) -> _Dataset:
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
    folder = paths.normalize(folder)
    if not os.path.isdir(folder):
      raise UserError(f"Image folder {folder!r} does not exist (expected "
                       f"{folder}/<split>/<label>/<image files>)")
    builder = tfds.folder_dataset.ImageFolder(folder)
    if split not in builder.info.splits:
      raise UserError(f"Image folder {folder!r} has no split {split!r}; it "
                       f"has {list(builder.info.splits)} (sub-splits are not "
                       f"supported for image folders)")
    src = None if streaming else _FolderSource(builder, split)
    return _Dataset(name or f"{_FOLDER_PREFIX}{folder}", split, folder,
                    builder.info, builder, src)

  if name.split(":")[0].split("/")[0] == digits.NAME:
    data_dir = digits.ensure_built(digits.NAME, data_dir)
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
  return _Dataset(name, split, data_dir, builder.info, builder, src)


def dataset_info(data_cfg) -> tuple[int, Any]:
  """Returns (number of examples in data_cfg.split, tfds DatasetInfo)."""
  ds = _open(data_cfg)
  return ds.count(), ds.info


def num_eval_batches(data_cfg, global_batch_size: int) -> int:
  """Number of (padded) global batches of one eval pass."""
  n, _ = dataset_info(data_cfg)
  return max(1, math.ceil(n / global_batch_size))


# ---------------------------------------------------------------------------
# Random-access machinery: Python decides WHICH examples (a pure function of
# (seed, step)); tf.data reads and preprocesses them in its own threads.
# ---------------------------------------------------------------------------

_MAX_STEPS = 2**62  # "forever" for tf.data.Dataset.range


def _epoch_tag(seed: int, epoch: int) -> int:
  """A 31-bit number mixing (seed, epoch): first half of example seeds."""
  ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
  return int(ss.generate_state(1, np.uint32)[0] >> 1)


class _EpochPermutations:
  """Caches the last few epoch permutations (thread-safe)."""

  def __init__(self, seed: int, n: int, keep: int = 3):
    self._seed, self._n, self._keep = int(seed) & 0xFFFFFFFF, n, keep
    self._cache: dict[int, tuple[np.ndarray, int]] = {}
    self._lock = threading.Lock()

  def __call__(self, epoch: int) -> tuple[np.ndarray, int]:
    with self._lock:
      if epoch not in self._cache:
        perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
        self._cache[epoch] = (perm, _epoch_tag(self._seed, epoch))
        for e in sorted(self._cache)[:-self._keep]:
          del self._cache[e]
      return self._cache[epoch]


def train_positions(seed: int, num_examples: int, step: int,
                    global_batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> list[tuple[int, int]]:
  """(epoch, example index) of this process's slice of global batch `step`."""
  perms = _EpochPermutations(seed, num_examples)
  return _slice_positions(perms, num_examples, step, global_batch_size,
                          process_index, process_count)


def _slice_positions(perms, n, step, gbs, pi, pc):
  b = gbs // pc
  start = step * gbs + pi * b
  out = []
  for pos in range(start, start + b):
    epoch, off = divmod(pos, n)
    out.append((epoch, int(perms(epoch)[0][off])))
  return out


def _python_value(v):
  """A source value as numpy_function can return it (bytes keep NULs)."""
  if isinstance(v, (str, bytes)):
    return np.array(v, dtype=object)
  a = np.asarray(v)
  return a.astype(object) if a.dtype.kind in "US" else a


def _folder_reader(src: _FolderSource) -> Callable[[tf.Tensor], dict]:
  """index -> {image bytes, label, image/filename}, entirely in the graph."""
  paths = tf.constant(src.paths)
  labels = tf.constant(src.labels)

  def read(index):
    path = tf.gather(paths, index)
    return {"image": tf.io.read_file(path), "label": tf.gather(labels, index),
            "image/filename": path}

  return read


def _record_reader(src) -> Callable[[tf.Tensor], dict]:
  """index -> example: one raw array_record read, parsed in the graph."""
  raw_source, lock = src.data_source, threading.Lock()
  features, decoders = src.dataset_info.features, src.decoders

  def raw(index):
    with lock:
      return np.array(raw_source[int(index)], dtype=object)

  def read(index):
    record = tf.numpy_function(raw, [index], tf.string, stateful=False)
    record.set_shape([])
    return features.deserialize_example(record, decoders=decoders)

  return read


def _python_reader(src) -> Callable[[tf.Tensor], dict]:
  """index -> example for any Python source (e.g. mocked data sources)."""
  lock = threading.Lock()
  probe = {k: _python_value(v) for k, v in src[0].items()}
  keys = list(probe)
  dtypes = [tf.constant(probe[k]).dtype for k in keys]

  def raw(index):
    with lock:
      ex = src[int(index)]
    return [_python_value(ex[k]) for k in keys]

  def read(index):
    values = tf.numpy_function(raw, [index], dtypes, stateful=False)
    for v, k in zip(values, keys):
      v.set_shape([None] * np.ndim(probe[k]))
    return dict(zip(keys, values))

  return read


def _example_reader(src) -> Callable[[tf.Tensor], dict]:
  if isinstance(src, _FolderSource):
    return _folder_reader(src)
  inner = getattr(src, "data_source", None)
  if (hasattr(src, "dataset_info") and inner is not None and len(inner)
      and isinstance(inner[0], bytes)):
    return _record_reader(src)
  return _python_reader(src)


def _preprocess(read: Callable, pp: str) -> Callable:
  """(index, seed int64[2]) -> preprocessed example, as a tf.data map fn."""
  pp_fn = preprocess.get_pp_fn(pp)

  def fn(index, seed):
    ex = dict(read(index))
    ex[preprocess.SEED_KEY] = seed
    return _strip_internal(pp_fn(ex))

  return fn


def _strip_internal(ex):
  return {k: v for k, v in ex.items() if k != preprocess.SEED_KEY}


def _parallel(num_threads: int | None) -> int:
  return num_threads if num_threads and num_threads > 0 else tf.data.AUTOTUNE


def _finish(ds: tf.data.Dataset, b: int, prefetch: int) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return (ds.batch(b, drop_remainder=True).prefetch(max(1, prefetch))
          .with_options(options))


def _batching_error(err: tf.errors.InvalidArgumentError) -> UserError:
  return UserError(
      f"Cannot batch the preprocessed examples ({err.message.splitlines()[0]}):"
      f" the pp string must produce fixed shapes (e.g. end with resize(...))")


class BatchIterator:
  """Iterator of dicts of numpy arrays over a tf.data pipeline.

  The one interface of every pipeline here: `next()`, `close()` (frees the
  pipeline's buffers and threads), and a context manager that closes.
  """

  def __init__(self, dataset: tf.data.Dataset):
    self._it = dataset.as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      raise StopIteration
    try:
      return next(self._it)
    except tf.errors.InvalidArgumentError as e:
      if "to the batch" in e.message or "Cannot batch" in e.message:
        raise _batching_error(e) from None
      raise

  def close(self):
    self._it = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------------------------
# Public iterators.
# ---------------------------------------------------------------------------


def train_iterator(data_cfg, pp: str, global_batch_size: int, *, seed: int,
                   start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None,
                   num_threads: int | None = None, prefetch: int = 2,
                   shuffle_buffer: int = 50_000) -> BatchIterator:
  """Infinite iterator of this process's slice of global batches start_step..

  Yields dicts of numpy arrays with leading dim global_batch_size //
  process_count. `num_threads` examples are preprocessed in parallel (default:
  tf.data's autotuning); `shuffle_buffer` only matters in streaming mode.
  """
  pi, pc = _process(process_index, process_count)
  b = _local_batch(global_batch_size, pc)
  ds = _open(data_cfg)
  if ds.streaming:
    return BatchIterator(_streaming_train(
        ds, pp, b, seed=seed, start_step=start_step, pi=pi, pc=pc,
        num_threads=num_threads, prefetch=prefetch,
        shuffle_buffer=shuffle_buffer))
  n = ds.count()
  if n == 0:
    raise UserError(f"{ds.name}:{ds.split} has no examples")
  perms = _EpochPermutations(seed, n)

  def slice_keys(step):
    pos = _slice_positions(perms, n, int(step), global_batch_size, pi, pc)
    seeds = [(perms(epoch)[1], idx) for epoch, idx in pos]
    return (np.array([idx for _, idx in pos], np.int64),
            np.array(seeds, np.int64))

  def keys(step):
    idx, seeds = tf.numpy_function(slice_keys, [step], (tf.int64, tf.int64),
                                   stateful=False)
    return tf.ensure_shape(idx, [b]), tf.ensure_shape(seeds, [b, 2])

  examples = (tf.data.Dataset.range(int(start_step), _MAX_STEPS)
              .map(keys).unbatch()
              .map(_preprocess(_example_reader(ds.source), pp),
                   num_parallel_calls=_parallel(num_threads)))
  return BatchIterator(_finish(examples, b, prefetch))


class EvalData:
  """One eval pass over a split, built (and its pp traced) once.

  `iterate()` starts a new pass over the same tf.data pipeline, so repeated
  evaluations neither re-open the dataset nor re-trace the pp. Every example
  appears exactly once over all processes; the last batch(es) are
  zero-padded and `_mask` (bool) marks real examples. Random-access mode:
  process p gets the contiguous slice p of each global batch.
  """

  def __init__(self, data_cfg, pp: str, global_batch_size: int, *,
               process_index: int | None = None,
               process_count: int | None = None,
               num_threads: int | None = None, prefetch: int = 2,
               seed: int = 0):
    pi, pc = _process(process_index, process_count)
    b = _local_batch(global_batch_size, pc)
    ds = _open(data_cfg)
    n = ds.count()
    self.num_batches = max(1, math.ceil(n / global_batch_size))
    if ds.streaming:
      real = _streaming_eval_examples(ds, pp, pi, pc, num_threads)
    else:
      # Process p's positions, batch after batch; the real ones form a prefix.
      pos = np.arange(self.num_batches)[:, None] * global_batch_size + (
          pi * b + np.arange(b))[None, :]
      idx = pos.reshape(-1)[pos.reshape(-1) < n].astype(np.int64)
      tag = _epoch_tag(seed, 0)
      fn = _preprocess(_example_reader(ds.source), pp)
      real = tf.data.Dataset.from_tensor_slices(idx).map(
          lambda i: fn(i, tf.stack([tf.constant(tag, tf.int64), i])),
          num_parallel_calls=_parallel(num_threads))
    self.dataset = _finish(_padded(real, self.num_batches * b), b, prefetch)

  def iterate(self) -> BatchIterator:
    return BatchIterator(self.dataset)

  def __iter__(self):
    return self.iterate()


def _padded(real: tf.data.Dataset, total: int) -> tf.data.Dataset:
  """`real` with `_mask`=True, then zero examples (`_mask`=False) up to total.

  Shapes the graph leaves open (e.g. after `decode`) are taken from the first
  example: the zero padding needs them.
  """
  shapes = {k: s.shape for k, s in real.element_spec.items()}
  if not all(s.is_fully_defined() for s in shapes.values()):
    first = next(iter(real.take(1)))
    shapes = {k: v.shape for k, v in first.items()}
  dtypes = {k: s.dtype for k, s in real.element_spec.items()}
  real = real.map(lambda ex: {
      **{k: tf.ensure_shape(v, shapes[k]) for k, v in ex.items()},
      MASK_KEY: tf.constant(True)})
  pad = {k: tf.zeros(shapes[k], dtypes[k]) for k in shapes}
  pad[MASK_KEY] = tf.constant(False)
  return real.concatenate(
      tf.data.Dataset.from_tensors(pad).repeat()).take(total)


_EVAL_CACHE: collections.OrderedDict = collections.OrderedDict()
_EVAL_CACHE_SIZE = 8


def _cfg_key(data_cfg) -> tuple:
  keys = ("name", "split", "streaming", "folder")
  return tuple(str(_get(data_cfg, k)) for k in keys) + (_data_dir(data_cfg),)


def eval_data(data_cfg, pp: str, global_batch_size: int, **kwargs) -> EvalData:
  """The `EvalData` for these arguments, reused while among the last 8 used."""
  key = (_cfg_key(data_cfg), pp, global_batch_size,
         tuple(sorted(kwargs.items())))
  if key not in _EVAL_CACHE:
    _EVAL_CACHE[key] = EvalData(data_cfg, pp, global_batch_size, **kwargs)
    while len(_EVAL_CACHE) > _EVAL_CACHE_SIZE:
      _EVAL_CACHE.popitem(last=False)
  _EVAL_CACHE.move_to_end(key)
  return _EVAL_CACHE[key]


def eval_iterator(data_cfg, pp: str, global_batch_size: int, **kwargs
                  ) -> BatchIterator:
  """One pass over the split in order (see `EvalData`), built afresh."""
  return EvalData(data_cfg, pp, global_batch_size, **kwargs).iterate()


# ---------------------------------------------------------------------------
# Streaming (tf.data) fallback.
# ---------------------------------------------------------------------------


def _split_for_process(ds: _Dataset, pi: int, pc: int):
  """(split arg, needs_shard): ImageFolder has no sub-split API."""
  if isinstance(ds.builder, tfds.folder_dataset.ImageFolder):
    return ds.split, True
  return tfds.even_splits(ds.split, pc)[pi], False


def _with_seed(seed: int):
  tag = tf.constant(_epoch_tag(seed, 0), tf.int64)

  def add(i, ex):
    ex = dict(ex)
    ex[preprocess.SEED_KEY] = tf.stack([tag, tf.cast(i, tf.int64)])
    return ex

  return add


def _streaming_train(ds, pp, b, *, seed, start_step, pi, pc, num_threads,
                     prefetch, shuffle_buffer):
  split, shard = _split_for_process(ds, pi, pc)
  # Restarts cannot resume a stream: reshuffle with a (seed, start_step) seed.
  run_seed = _epoch_tag(seed, 1_000_003 + int(start_step)) + pi
  data = ds.as_dataset(split, shuffle_files=True, seed=run_seed)
  if shard:
    data = data.shard(pc, pi)
  pp_fn = preprocess.get_pp_fn(pp)
  data = (data.shuffle(shuffle_buffer, seed=run_seed)
          .repeat()
          .enumerate()
          .map(_with_seed(run_seed))
          .map(lambda ex: _strip_internal(pp_fn(ex)),
               num_parallel_calls=_parallel(num_threads)))
  return _finish(data, b, prefetch)


def _streaming_eval_examples(ds, pp, pi, pc, num_threads):
  split, shard = _split_for_process(ds, pi, pc)
  data = ds.as_dataset(split, shuffle_files=False)
  if shard:
    data = data.shard(pc, pi)
  pp_fn = preprocess.get_pp_fn(pp)
  return data.enumerate().map(
      lambda i, ex: _strip_internal(pp_fn(_with_seed(0)(i, ex))),
      num_parallel_calls=_parallel(num_threads))
