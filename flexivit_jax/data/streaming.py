"""Streaming reads (tf.data over tfds or an ImageFolder): for datasets without random access.

Used when a data config sets `streaming=True`, or for datasets prepared only as
tfrecord. Process p of P reads `tfds.even_splits(split, P)[p]` (image folders,
which have no sub-split API: `Dataset.shard(P, p)`). Unlike random access
(data/order.py), batches depend on the process count, and a restart cannot
resume a stream: it reshuffles with a seed derived from (seed, start_step).
Both functions return unbatched preprocessed examples; data/pipeline.py batches.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from flexivit_jax.data import preprocess as preprocess_lib
from flexivit_jax.data.order import epoch_tag
from flexivit_jax.data.sources import Dataset


def _process_part(ds: Dataset, pi: int, pc: int, **as_dataset_kw) -> tf.data.Dataset:
  """Process pi's part of the split."""
  if ds.is_image_folder:
    return ds.as_dataset(ds.split, **as_dataset_kw).shard(pc, pi)
  return ds.as_dataset(tfds.even_splits(ds.split, pc)[pi], **as_dataset_kw)


def _with_seed(seed: int) -> Callable:
  """(position in the stream, example) -> the example with its pp seed."""
  tag = tf.constant(epoch_tag(seed, 0), tf.int64)

  def add(i, ex):
    ex = dict(ex)
    ex[preprocess_lib.SEED_KEY] = tf.stack([tag, tf.cast(i, tf.int64)])
    return ex

  return add


def train_examples(ds: Dataset, preprocess: Callable, *, seed: int, start_step: int,
                   pi: int, pc: int, shuffle_buffer: int,
                   num_parallel: int) -> tf.data.Dataset:
  """Process pi's endless shuffled stream, `preprocess`ed (`num_parallel` at a time)."""
  # Restarts cannot resume a stream: reshuffle with a (seed, start_step) seed.
  run_seed = epoch_tag(seed, 1_000_003 + int(start_step)) + pi
  data = _process_part(ds, pi, pc, shuffle_files=True, seed=run_seed)
  return (data.shuffle(shuffle_buffer, seed=run_seed)
          .repeat()
          .enumerate()
          .map(_with_seed(run_seed))
          .map(preprocess, num_parallel_calls=num_parallel))


def eval_examples(ds: Dataset, preprocess: Callable, pi: int, pc: int,
                  num_parallel: int) -> tf.data.Dataset:
  """Process pi's part of the split once, in order, `preprocess`ed."""
  data = _process_part(ds, pi, pc, shuffle_files=False)
  return data.enumerate().map(lambda i, ex: preprocess(_with_seed(0)(i, ex)),
                              num_parallel_calls=num_parallel)
