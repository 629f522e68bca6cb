"""SIGTERM or a preemption notice, turned into a stop that every process agrees on."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# ----------------------------------------------------------------------------
# Preemption.


class Preemption:
  """SIGTERM (or a preemption notice) -> a stop all processes agree on, without a per-step
  collective.

  One process: a signal flag, read every step. Several processes: JAX's preemption
  sync point (the coordination service propagates the notice and picks a common step)
  when the preemption service runs; otherwise the flag is all-gathered only every
  `check_every` steps.
  """

  def __init__(self, check_every: int = 10):
    self.requested = False
    self.check_every = max(1, int(check_every))
    self._previous = None
    self._sync_point = jax.process_count() > 1 and _preemption_service_running()

  def __enter__(self):
    # With the service, its own SIGTERM handler must stay installed.
    if not self._sync_point and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if self._sync_point:
      return multihost_utils.reached_preemption_sync_point(step)
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(int(self.requested)))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _preemption_service_running() -> bool:
  """Whether JAX's preemption sync manager runs in this process.

  JAX has no public accessor for the manager. It creates one in
  `jax.distributed.initialize` when `jax_enable_preemption_service` is on (the
  default), so this reads those two public settings rather than the private
  `jax._src.distributed` state; the flag must not change after `initialize`.
  """
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
