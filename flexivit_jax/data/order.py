"""Which examples each training step reads: a pure function of (seed, step), no TensorFlow.

Epoch e is the permutation `np.random.default_rng([seed, e])` of all example
indices; global batch k holds positions k*B .. (k+1)*B - 1 of the concatenated
epoch streams (a batch can straddle two epochs), and process p of P reads only
the contiguous slice p*B/P .. (p+1)*B/P - 1 of it. Hence a global batch does
not depend on the number of processes, and a restart at step k continues with
batch k without replaying anything. Preprocessing randomness is seeded per
example from (`epoch_tag(seed, epoch)`, example index).

This is the data-order contract (tests/data/test_order.py pins it); it stays
numpy-only so that it can be read and checked without the input pipeline.
"""
from __future__ import annotations

import threading

import numpy as np

MAX_STEPS = 2**62  # "forever": the end of the pipeline's range of steps.


def epoch_tag(seed: int, epoch: int) -> int:
  """A 31-bit number mixing (seed, epoch): the first half of its examples' pp seeds."""
  ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), 0x5EED])
  return int(ss.generate_state(1, np.uint32)[0] >> 1)


class EpochPermutations:
  """epoch -> (permutation of the n example indices, epoch tag); keeps the last few (thread-safe).

  tf.data asks from several threads, and a batch that straddles two epochs needs both.
  """

  def __init__(self, seed: int, n: int, keep: int = 3):
    self._seed, self._n, self._keep = int(seed) & 0xFFFFFFFF, n, keep
    self._cache: dict[int, tuple[np.ndarray, int]] = {}
    self._lock = threading.Lock()

  def __call__(self, epoch: int) -> tuple[np.ndarray, int]:
    with self._lock:
      if epoch not in self._cache:
        perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
        self._cache[epoch] = (perm, epoch_tag(self._seed, epoch))
        for e in sorted(self._cache)[:-self._keep]:
          del self._cache[e]
      return self._cache[epoch]


def train_positions(seed: int, num_examples: int, step: int,
                    global_batch_size: int, process_index: int = 0,
                    process_count: int = 1) -> list[tuple[int, int]]:
  """(epoch, example index) of this process's slice of global batch `step`."""
  perms = EpochPermutations(seed, num_examples)
  return slice_positions(perms, num_examples, step, global_batch_size,
                         process_index, process_count)


def slice_positions(perms: EpochPermutations, n: int, step: int, gbs: int, pi: int,
                    pc: int) -> list[tuple[int, int]]:
  """`train_positions` with the permutations of a running pipeline (computed once per epoch)."""
  b = gbs // pc
  start = step * gbs + pi * b
  out = []
  for pos in range(start, start + b):
    epoch, off = divmod(pos, n)
    out.append((epoch, int(perms(epoch)[0][off])))
  return out
