"""The run log: metrics.jsonl and TensorBoard, written by process 0 only.

`metrics.jsonl` holds one JSON object per logged step; on resume, lines past the
restored step are dropped so the file reads as one run.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  if isinstance(value, tuple):
    return list(value)
  return value


def read_metrics(workdir: str) -> list[dict]:
  """All rows of `WORKDIR/metrics.jsonl` (empty if there is none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class MetricWriter:
  """Appends metrics to metrics.jsonl and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self.path)
    try:
      import tensorflow as tf  # Optional: only for event files.
      self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tb"))
    except ImportError:  # pragma: no cover - tensorflow is a dependency.
      self._tb = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
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
