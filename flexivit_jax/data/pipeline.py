"""The tf.data input pipelines: read by index, preprocess, batch, iterate.

Random access (the default): Python picks the indices of each step's examples
(data/order.py: a pure function of (seed, step)), and a tf.data pipeline reads,
parses and preprocesses them in its own threads, outside the GIL, in order. So a
global batch does not depend on the number of processes, and restarting at
`start_step=k` continues exactly with batch k. Datasets read by streaming
(data/streaming.py) are batched and iterated the same way. See docs/data.md.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from flexivit_jax.data import preprocess
from flexivit_jax.data import streaming
from flexivit_jax.data.order import MAX_STEPS
from flexivit_jax.data.order import EpochPermutations
from flexivit_jax.data.order import epoch_tag
from flexivit_jax.data.order import slice_positions
from flexivit_jax.data.sources import ClassSubset
from flexivit_jax.data.sources import LABEL_KEY
from flexivit_jax.data.sources import FolderSource
from flexivit_jax.data.sources import open_dataset
from flexivit_jax.data.sources import selection_key
from flexivit_jax.errors import UserError

MASK_KEY = "_mask"


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


# ---------------------------------------------------------------------------
# Readers: index -> example, as tf.data map functions.
# ---------------------------------------------------------------------------


def _python_value(v):
  """A source value as numpy_function can return it (bytes keep NULs)."""
  if isinstance(v, (str, bytes)):
    return np.array(v, dtype=object)
  a = np.asarray(v)
  return a.astype(object) if a.dtype.kind in "US" else a


def _folder_reader(src: FolderSource) -> Callable[[tf.Tensor], dict]:
  """index -> {image bytes, label, image/filename}, entirely in the graph."""
  paths = tf.constant(src.paths)
  labels = tf.constant(src.labels)

  def read(index):
    path = tf.gather(paths, index)
    return {"image": tf.io.read_file(path), LABEL_KEY: tf.gather(labels, index),
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


def _subset_reader(subset: ClassSubset) -> Callable[[tf.Tensor], dict]:
  """index -> example `subset.indices[index]` of the full source, with its new label."""
  read = _example_reader(subset.source)
  indices, labels = tf.constant(subset.indices), tf.constant(subset.labels)

  def read_subset(index):
    ex = dict(read(tf.gather(indices, index)))
    ex[LABEL_KEY] = tf.gather(labels, index)
    return ex

  return read_subset


def _example_reader(src) -> Callable[[tf.Tensor], dict]:
  if isinstance(src, ClassSubset):
    return _subset_reader(src)
  if isinstance(src, FolderSource):
    return _folder_reader(src)
  inner = getattr(src, "data_source", None)
  if (hasattr(src, "dataset_info") and inner is not None and len(inner)
      and isinstance(inner[0], bytes)):
    return _record_reader(src)
  return _python_reader(src)


def _pp_fn(pp: str) -> Callable[[dict], dict]:
  """The pp as example -> example, without the per-example seed it consumed."""
  pp_fn = preprocess.get_pp_fn(pp)
  return lambda ex: {k: v for k, v in pp_fn(ex).items() if k != preprocess.SEED_KEY}


def _preprocess(read: Callable, pp: str) -> Callable:
  """(index, seed int64[2]) -> preprocessed example, as a tf.data map fn."""
  pp_fn = _pp_fn(pp)

  def fn(index, seed):
    ex = dict(read(index))
    ex[preprocess.SEED_KEY] = seed
    return pp_fn(ex)

  return fn


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
  ds = open_dataset(data_cfg)
  if ds.streaming:
    examples = streaming.train_examples(
        ds, _pp_fn(pp), seed=seed, start_step=start_step, pi=pi, pc=pc,
        shuffle_buffer=shuffle_buffer, num_parallel=_parallel(num_threads))
    return BatchIterator(_finish(examples, b, prefetch))
  n = ds.count()
  if n == 0:
    raise UserError(f"{ds.name}:{ds.split} has no examples")
  perms = EpochPermutations(seed, n)

  def slice_keys(step):
    pos = slice_positions(perms, n, int(step), global_batch_size, pi, pc)
    seeds = [(perms(epoch)[1], idx) for epoch, idx in pos]
    return (np.array([idx for _, idx in pos], np.int64),
            np.array(seeds, np.int64))

  def keys(step):
    idx, seeds = tf.numpy_function(slice_keys, [step], (tf.int64, tf.int64),
                                   stateful=False)
    return tf.ensure_shape(idx, [b]), tf.ensure_shape(seeds, [b, 2])

  examples = (tf.data.Dataset.range(int(start_step), MAX_STEPS)
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
    ds = open_dataset(data_cfg)
    n = ds.count()
    self.num_batches = max(1, math.ceil(n / global_batch_size))
    if ds.streaming:
      real = streaming.eval_examples(ds, _pp_fn(pp), pi, pc, _parallel(num_threads))
    else:
      # Process p's positions, batch after batch; the real ones form a prefix.
      pos = np.arange(self.num_batches)[:, None] * global_batch_size + (
          pi * b + np.arange(b))[None, :]
      idx = pos.reshape(-1)[pos.reshape(-1) < n].astype(np.int64)
      tag = epoch_tag(seed, 0)
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


def eval_data(data_cfg, pp: str, global_batch_size: int, **kwargs) -> EvalData:
  """The `EvalData` for these arguments, reused while among the last 8 used."""
  key = (selection_key(data_cfg), pp, global_batch_size,
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
