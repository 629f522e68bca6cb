"""Deterministic, process-count-invariant input pipelines.

Random-access mode (default): examples are read with `tfds.data_source`
(array_record) by index. The order of training examples is a pure function of
(seed, step): epoch e is the permutation `np.random.default_rng([seed, e])` of
all example indices; global batch k holds positions k*B .. (k+1)*B - 1 of the
concatenated epoch streams, and process p of P reads (only) the contiguous
slice p*B/P .. (p+1)*B/P - 1 of it. Preprocessing randomness is seeded per
example from (seed, epoch, example index). Hence a global batch does not
depend on the number of processes, and restarting at `start_step=k` continues
exactly with batch k without replaying anything.

Streaming mode (`data_cfg.streaming=True`, or automatic for datasets that are
only prepared as tfrecord): tf.data over `tfds.even_splits(split, P)[p]`. It
is NOT process-count invariant and restarts reshuffle instead of resuming.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import os
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from flexivit_jax.data import digits
from flexivit_jax.data import ops
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
  return os.path.expanduser(d) if d else None


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
  """Random access over an ImageFolder split: encoded bytes + label."""

  def __init__(self, builder, split):
    self._examples = builder._split_examples[split]  # pylint: disable=protected-access
    self._str2int = builder.info.features["label"].str2int

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, i):
    ex = self._examples[i]
    with tf.io.gfile.GFile(ex.image_path, "rb") as f:
      return {"image": f.read(), "label": self._str2int(ex.label),
              "image/filename": ex.image_path}


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
    kw = {}
    if not isinstance(self.builder, tfds.folder_dataset.ImageFolder):
      kw["read_config"] = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
      kw["decoders"] = _skip_image_decoding(self.info.features)
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


def _open(data_cfg) -> _Dataset:
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
    folder = os.path.expanduser(folder)
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
# Random-access machinery.
# ---------------------------------------------------------------------------


def _epoch_tag(seed: int, epoch: int) -> int:
  """A 31-bit number mixing (seed, epoch): first half of example seeds."""
  ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
  return int(ss.generate_state(1, np.uint32)[0] >> 1)


def _to_tensor_value(v):
  if isinstance(v, (str, bytes)):
    return v  # (np.asarray would strip trailing NUL bytes of binary data)
  a = np.asarray(v)
  if a.dtype.kind == "O" and a.ndim == 0:
    return a.item()
  return a


def _spec_of(v) -> tf.TensorSpec:
  t = tf.constant(v)
  return tf.TensorSpec([None] * t.shape.rank, t.dtype)


def _stack_inputs(values: list):
  """Stacks per-example input values, or returns None if shapes differ."""
  first = values[0]
  if isinstance(first, (str, bytes)):
    if not all(isinstance(v, type(first)) for v in values):
      return None
    return np.array(values, dtype=object)
  try:
    out = np.stack(values)
  except ValueError:
    return None
  return out.astype(object) if out.dtype.kind in "US" else out


class _ExampleProcessor:
  """Reads examples by index and runs the pp as a tf.function.

  The pp is traced once for one example (`_one`) and once for a batch
  (`_many`: tf.map_fn of the same per-example function, which avoids Python
  call overhead); both give identical results. The batched path is used when
  the raw inputs of a batch can be stacked (e.g. encoded images).
  """

  def __init__(self, source, pp: str):
    self._source = source
    self._pp_fn = ops.get_pp_fn(pp)
    self._lock = threading.Lock()
    self._one = self._many = None
    self._init_lock = threading.Lock()

  def read(self, index: int) -> dict:
    with self._lock:
      ex = self._source[int(index)]
    return {k: _to_tensor_value(v) for k, v in ex.items()}

  def _trace(self, ex):
    sig = {k: _spec_of(v) for k, v in ex.items()}
    sig[ops.SEED_KEY] = tf.TensorSpec([2], tf.int64)
    pp_fn = self._pp_fn

    def run(data):
      out = pp_fn(data)
      return {k: v for k, v in out.items() if k != ops.SEED_KEY}

    one = tf.function(run, input_signature=[sig])
    outs = one.get_concrete_function().structured_outputs
    out_sig = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in outs.items()}
    bsig = {k: tf.TensorSpec([None, *v.shape], v.dtype) for k, v in sig.items()}

    def run_many(batch):
      return tf.map_fn(run, batch, fn_output_signature=out_sig,
                       parallel_iterations=8)

    self._many = tf.function(run_many, input_signature=[bsig])
    self._one = one

  def _ensure_traced(self, ex):
    if self._one is None:
      with self._init_lock:
        if self._one is None:
          self._trace(ex)

  def __call__(self, index: int, seed_pair) -> dict:
    return self.batch([index], [seed_pair])[0]

  def batch(self, indices, seed_pairs) -> list[dict]:
    """Preprocessed examples (dicts of numpy arrays) for the given indices."""
    exs = [self.read(i) for i in indices]
    if not exs:
      return []
    self._ensure_traced(exs[0])
    for ex, sp in zip(exs, seed_pairs):
      ex[ops.SEED_KEY] = np.asarray(sp, np.int64)
    if len(exs) > 1 and exs[0].keys() == set.intersection(
        *[set(e) for e in exs]):
      stacked = {k: _stack_inputs([e[k] for e in exs]) for k in exs[0]}
      if all(v is not None for v in stacked.values()):
        out = {k: v.numpy() for k, v in self._many(stacked).items()}
        return [{k: v[j] for k, v in out.items()} for j in range(len(exs))]
    return [{k: v.numpy() for k, v in self._one(ex).items()} for ex in exs]


def _stack(examples: list[dict]) -> dict:
  out = {}
  for k in examples[0]:
    try:
      out[k] = np.stack([e[k] for e in examples])
    except ValueError as err:
      shapes = sorted({ex[k].shape for ex in examples})
      raise UserError(
          f"Cannot batch key {k!r}: examples have shapes {shapes}; the pp "
          f"string must produce fixed shapes (e.g. end with resize(...))"
      ) from err
  return out


class _BackgroundIterator:
  """Runs make_batch(k) for k in steps on a thread pool, yields in order.

  A feeder thread submits jobs and puts their futures into a bounded queue,
  so at most `num_threads + prefetch` batches are in flight or ready.
  """

  def __init__(self, make_batch: Callable[[int], dict], steps: Iterator[int],
               num_threads: int, prefetch: int):
    # The feeder thread must not reference `self`, so that an abandoned
    # iterator is garbage collected and its __del__ stops the threads.
    pool = concurrent.futures.ThreadPoolExecutor(
        max(1, num_threads), thread_name_prefix="flexivit_data")
    q = queue.Queue(maxsize=max(1, num_threads + prefetch))
    stop = threading.Event()
    done = object()
    self._pool, self._queue, self._stop, self._done = pool, q, stop, done

    def put(item) -> bool:
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          return True
        except queue.Full:
          continue
      return False

    def feed():
      try:
        for k in steps:
          if stop.is_set():
            return
          fut = pool.submit(make_batch, k)
          if not put(fut):
            fut.cancel()
            return
        put(done)
      except BaseException as e:  # pylint: disable=broad-except
        put(e)

    self._feeder = threading.Thread(target=feed, daemon=True,
                                    name="flexivit_data_feeder")
    self._feeder.start()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._stop.is_set():
      raise StopIteration
    item = self._queue.get()
    if item is self._done:
      self.close()
      raise StopIteration
    if isinstance(item, BaseException):
      self.close()
      raise item
    try:
      return item.result()
    except BaseException:
      self.close()
      raise

  def close(self):
    if self._stop.is_set():
      return
    self._stop.set()
    while True:  # drop pending work
      try:
        item = self._queue.get_nowait()
      except queue.Empty:
        break
      if isinstance(item, concurrent.futures.Future):
        item.cancel()
    self._pool.shutdown(wait=False, cancel_futures=True)

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass


def _default_threads() -> int:
  return max(2, min(16, os.cpu_count() or 2))


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


# ---------------------------------------------------------------------------
# Public iterators.
# ---------------------------------------------------------------------------


def train_iterator(data_cfg, pp: str, global_batch_size: int, *, seed: int,
                   start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None,
                   num_threads: int | None = None, prefetch: int = 2,
                   shuffle_buffer: int = 50_000) -> Iterator[dict]:
  """Infinite iterator of this process's slice of global batches start_step..

  Yields dicts of numpy arrays with leading dim global_batch_size //
  process_count. `shuffle_buffer` only matters in streaming mode.
  """
  pi, pc = _process(process_index, process_count)
  b = _local_batch(global_batch_size, pc)
  ds = _open(data_cfg)
  num_threads = num_threads or _default_threads()
  if ds.streaming:
    return _streaming_train(ds, pp, b, seed=seed, start_step=start_step,
                            pi=pi, pc=pc, prefetch=prefetch,
                            shuffle_buffer=shuffle_buffer)
  n = ds.count()
  if n == 0:
    raise UserError(f"{ds.name}:{ds.split} has no examples")
  proc = _ExampleProcessor(ds.source, pp)
  perms = _EpochPermutations(seed, n)

  def make_batch(step):
    pos = _slice_positions(perms, n, step, global_batch_size, pi, pc)
    seeds = [(perms(epoch)[1], idx) for epoch, idx in pos]
    return _stack(proc.batch([idx for _, idx in pos], seeds))

  def steps():
    k = int(start_step)
    while True:
      yield k
      k += 1

  return _BackgroundIterator(make_batch, steps(), num_threads, prefetch)


def eval_iterator(data_cfg, pp: str, global_batch_size: int, *,
                  process_index: int | None = None,
                  process_count: int | None = None,
                  num_threads: int | None = None, prefetch: int = 2,
                  seed: int = 0) -> Iterator[dict]:
  """One pass over the split, in order; the last batch is zero-padded.

  Every example appears exactly once over all processes; `_mask` (bool) marks
  real examples. Random-access mode: process p gets the contiguous slice p of
  each global batch.
  """
  pi, pc = _process(process_index, process_count)
  b = _local_batch(global_batch_size, pc)
  ds = _open(data_cfg)
  num_threads = num_threads or _default_threads()
  n = ds.count()
  num_batches = max(1, math.ceil(n / global_batch_size))
  if ds.streaming:
    return _streaming_eval(ds, pp, b, num_batches, pi=pi, pc=pc,
                           prefetch=prefetch)
  proc = _ExampleProcessor(ds.source, pp)
  tag = _epoch_tag(seed, 0)
  template = {k: np.zeros_like(v) for k, v in proc(0, (tag, 0)).items()}

  def make_batch(step):
    start = step * global_batch_size + pi * b
    real = list(range(start, min(start + b, n)))
    exs = proc.batch(real, [(tag, i) for i in real])
    exs += [template] * (b - len(real))
    out = _stack(exs)
    out[MASK_KEY] = np.arange(start, start + b) < n
    return out

  return _BackgroundIterator(make_batch, iter(range(num_batches)), num_threads,
                             prefetch)


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
    ex[ops.SEED_KEY] = tf.stack([tag, tf.cast(i, tf.int64)])
    return ex

  return add


def _strip_internal(ex):
  return {k: v for k, v in ex.items() if k != ops.SEED_KEY}


def _streaming_train(ds, pp, b, *, seed, start_step, pi, pc, prefetch,
                     shuffle_buffer):
  split, shard = _split_for_process(ds, pi, pc)
  # Restarts cannot resume a stream: reshuffle with a (seed, start_step) seed.
  run_seed = _epoch_tag(seed, 1_000_003 + int(start_step)) + pi
  data = ds.as_dataset(split, shuffle_files=True, seed=run_seed)
  if shard:
    data = data.shard(pc, pi)
  pp_fn = ops.get_pp_fn(pp)
  data = (data.shuffle(shuffle_buffer, seed=run_seed)
          .repeat()
          .enumerate()
          .map(_with_seed(run_seed))
          .map(lambda ex: _strip_internal(pp_fn(ex)),
               num_parallel_calls=tf.data.AUTOTUNE)
          .batch(b, drop_remainder=True)
          .prefetch(prefetch))
  return data.as_numpy_iterator()


def _streaming_eval(ds, pp, b, num_batches, *, pi, pc, prefetch):
  split, shard = _split_for_process(ds, pi, pc)
  data = ds.as_dataset(split, shuffle_files=False)
  if shard:
    data = data.shard(pc, pi)
  pp_fn = ops.get_pp_fn(pp)

  def fn(i, ex):
    out = _strip_internal(pp_fn(_with_seed(0)(i, ex)))
    out[MASK_KEY] = tf.constant(True)
    return out

  data = data.enumerate().map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  spec = data.element_spec
  if not all(s.shape.is_fully_defined() for s in spec.values()):
    raise UserError(f"eval pp must produce fixed shapes, got {spec}")
  pad = tf.data.Dataset.from_tensors(
      {k: tf.zeros(s.shape, s.dtype) for k, s in spec.items()}).repeat()
  data = (data.concatenate(pad).take(num_batches * b)
          .batch(b, drop_remainder=True).prefetch(prefetch))
  return data.as_numpy_iterator()
