"""What a training run shows and leaves behind: metrics.jsonl, TensorBoard, progress bar, plots.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step;
on resume, lines past the restored step are dropped so the file reads as one run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Iterable, Mapping, Optional

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


class Progress:
  """A terminal progress bar with images/s and ETA (tqdm), off when not wanted."""

  def __init__(self, total: int, initial: int, batch_size: int, enabled: bool):
    self.batch_size = batch_size
    self._bar = None
    if enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                       file=sys.stderr, smoothing=0.1)

  def update(self, n: int = 1, **postfix) -> None:
    if self._bar is None:
      return
    self._bar.update(n)
    if postfix:
      rate = self._bar.format_dict.get("rate") or 0.0
      self._bar.set_postfix(img_s=f"{rate * self.batch_size:.0f}", **postfix, refresh=False)

  def write(self, message: str) -> None:
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


class Throughput:
  """Images per second between two log points."""

  def __init__(self, batch_size: int, step: int):
    self.batch_size, self._step, self._time = batch_size, step, time.perf_counter()

  def __call__(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self._step) * self.batch_size / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate


def seqhw_side(seqhw) -> int:
  """Tokens along the height, for an int or an (h, w) seqhw."""
  return seqhw if isinstance(seqhw, int) else seqhw[0]


def format_table(results: Mapping[str, Mapping[Any, float]], image_size: Optional[int] = None
                 ) -> str:
  """Accuracy per flexi value, one column per evaluator."""
  names = list(results)
  values = sorted({v for r in results.values() for v in r}, key=seqhw_side)
  header = ["seqhw", "patch"] + [f"{n} prec@1" for n in names]
  rows = []
  for v in values:
    side = seqhw_side(v)
    patch = f"{image_size // side}" if image_size else "-"
    rows.append([str(v), patch] + [f"{results[n].get(v, float('nan')) * 100:6.2f}%"
                                   for n in names])
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))
  return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _plot_lines(lines: Mapping[str, tuple], path: str, *, xlabel: str, title: str,
                invert_x: bool = False) -> str:
  """Writes a PNG of prec@1 curves {label: (xs, accuracies in [0, 1])}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, (xs, accs) in lines.items():
    ax.plot(xs, [a * 100 for a in accs], marker="o", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("prec@1 (%)")
  if invert_x:
    ax.invert_xaxis()
  ax.grid(alpha=0.3)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_accuracy(curves: Mapping[str, Mapping[int, float]], path: str, *,
                  image_size: Optional[int] = None, title: str = "") -> str:
  """Writes a PNG of prec@1 against patch size (or seqhw), one line per curve."""
  lines = {}
  for label, curve in curves.items():
    xs = sorted(curve, key=seqhw_side)
    sides = [seqhw_side(x) for x in xs]
    lines[label] = ([image_size // s for s in sides] if image_size else sides,
                    [curve[x] for x in xs])
  xlabel = "patch size (px)" if image_size else "seqhw (tokens per side)"
  return _plot_lines(lines, path, xlabel=xlabel, title=title, invert_x=bool(image_size))


def _parse_eval_key(key: str):
  """'eval/NAME/seqhw=S/prec@1' -> (NAME, S) or None."""
  parts = key.split("/")
  if len(parts) == 4 and parts[0] == "eval" and parts[3] == "prec@1":
    seqhw = parts[2].split("=", 1)[1]
    seqhw = int(seqhw) if seqhw.isdigit() else tuple(int(s) for s in seqhw.split("x"))
    return parts[1], seqhw
  return None


def eval_curve_over_compute(rows: Iterable[Mapping[str, Any]], evaluator: Optional[str] = None
                            ) -> list:
  """[(cumulative GFLOPs, {seqhw: prec@1})] of every eval row that logged its compute.

  `evaluator` defaults to the first name (sorted) found in the rows.
  """
  points = []
  for row in rows:
    if "compute/gflops" not in row:
      continue
    accs = {}
    for key, value in row.items():
      parsed = _parse_eval_key(key)
      if parsed:
        evaluator = evaluator or parsed[0]
        if parsed[0] == evaluator:
          accs[parsed[1]] = value
    if accs:
      points.append((row["compute/gflops"], accs))
  return points


def format_compute_table(curves: Mapping[str, list], seqhw) -> str:
  """One line per eval point: run, GFLOPs, prec@1."""
  lines = [f"{'run':>16}  {'train GFLOPs':>14}  prec@1 (seqhw={seqhw})"]
  for name, points in curves.items():
    for gflops, acc in points:
      lines.append(f"{name:>16}  {gflops:14.1f}  {acc * 100:6.2f}%")
  return "\n".join(lines)


def plot_over_compute(curves: Mapping[str, list], path: str, *, title: str = "") -> str:
  """Writes a PNG of prec@1 against cumulative training GFLOPs, one line per run."""
  lines = {label: ([g for g, _ in points], [a for _, a in points])
           for label, points in curves.items()}
  return _plot_lines(lines, path, xlabel="training compute (GFLOPs, XLA cost analysis)",
                     title=title)


def final_eval_curves(rows: Iterable[Mapping[str, Any]]) -> Dict[str, Dict[Any, float]]:
  """{evaluator: {seqhw: prec@1}} from the last eval row of a metrics.jsonl."""
  last = {}
  for row in rows:
    if any(k.startswith("eval/") for k in row):
      last = row
  curves: Dict[str, Dict[Any, float]] = {}
  for key, value in last.items():
    parsed = _parse_eval_key(key)
    if parsed:
      curves.setdefault(parsed[0], {})[parsed[1]] = value
  return curves
