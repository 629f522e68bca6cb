"""The run log: metrics.jsonl and TensorBoard, written by process 0 only.

`metrics.jsonl` holds one JSON object per logged step; on resume, lines past the
restored step are dropped so the file reads as one run. A local file is appended to;
at a URL (gs://), where objects cannot be appended to, the whole file is rewritten
through `atomic` at each write (it is small: one line per logged step).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from flexivit_jax import paths
from flexivit_jax.outputs import atomic


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  return value


def read_metrics(workdir: str) -> list[dict]:
  """All rows of `WORKDIR/metrics.jsonl` (empty if there is none)."""
  text = atomic.read_text(os.path.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    paths.makedirs(workdir)
    self._lines = [json.dumps(r) + "\n" for r in read_metrics(workdir)
                   if r.get("step", 0) <= resume_step]
    atomic.write_atomic(self.path, "".join(self._lines))
    try:
      import tensorflow as tf  # Optional: only for event files.
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
    except ImportError:  # pragma: no cover - tensorflow is a dependency.
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    line = json.dumps(row) + "\n"
    if paths.is_url(self.path):
      self._lines.append(line)
      atomic.write_atomic(self.path, "".join(self._lines))
    else:
      with open(self.path, "a") as f:
        f.write(line)
    if self._tb is not None:
      import tensorflow as tf
      with self._tb.as_default(step=int(step)):
        for key, value in row.items():
          if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            tf.summary.scalar(key, value)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
