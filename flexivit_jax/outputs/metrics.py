"""What a run shows and leaves behind: metrics.jsonl, TensorBoard, progress (bar or lines), plots.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step;
on resume, lines past the restored step are dropped so the file reads as one run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from flexivit_jax.errors import UserError

# A flexi value as a hashable key, e.g. (("seqhw", 4),) or (("patch_size", (8, 8)),).
FlexiKey = Tuple[Tuple[str, Any], ...]


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


PROGRESS_MODES = ("auto", "bar", "lines", "none")


def progress_mode(setting: Any) -> str:
  """'bar', 'lines' or 'none' for a setting of PROGRESS_MODES.

  'auto' is a bar when stdout and stderr are terminals, else plain lines (a log
  file, a pod, SLURM, nohup), so a run says what it does wherever it runs.
  """
  if setting == "auto":
    return "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"
  if setting in PROGRESS_MODES:
    return setting
  raise UserError(f"progress {setting!r} is unknown; allowed: {', '.join(PROGRESS_MODES)}")


def format_duration(seconds: float) -> str:
  """3725 -> '1h02m', 190 -> '3m10s', 7.2 -> '7s'."""
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _field(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
  """What a long loop shows: a bar on a terminal, plain lines in a log, or nothing.

  One object for every CLI (training, evaluation, analyses, benchmarks), so a
  run reads the same on a laptop and in a pod's log. Modes (`progress_mode`):
    bar    tqdm on stderr with images/s and ETA; `log` and `line` show nothing.
    lines  `log` and `line` print one line each to stdout, flushed at once;
           `update` prints one too when `every_s` seconds passed since the last.
    none   neither; only `write` (final tables).
  `main_process=False` (the other processes of a multi-host run) shows nothing at
  all, `write` included: those print errors only.
  """

  def __init__(self, total: int, initial: int = 0, *, mode: Any = "auto",
               batch_size: int = 0, unit: str = "step", every_s: Optional[float] = None,
               main_process: bool = True):
    self.mode = progress_mode(mode) if main_process else "off"
    self.total, self.done, self.batch_size, self.unit = total, initial, batch_size, unit
    self.every_s = every_s
    self._mark = (initial, time.perf_counter())  # (count, time) at the previous line.
    self._bar = None
    if self.mode == "bar":
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True,
                       file=sys.stderr, smoothing=0.1)

  @property
  def lines(self) -> bool:
    """Whether plain progress lines are shown."""
    return self.mode == "lines"

  def update(self, n: int = 1, **postfix) -> None:
    """Counts `n` more units; `postfix` goes on the bar (or on a timed line)."""
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        rate = self._bar.format_dict.get("rate") or 0.0
        self._bar.set_postfix(img_s=f"{rate * self.batch_size:.0f}", **postfix, refresh=False)
    elif self.lines and self.every_s is not None and (
        self.done >= self.total or time.perf_counter() - self._mark[1] >= self.every_s):
      self.log(postfix)

  def log(self, fields: Mapping[str, Any], *, images_per_s: Optional[float] = None) -> None:
    """One line: 'UNIT done/total  KEY VALUE ...  N img/s  ETA 3m10s' (lines mode).

    Rates are over the units since the previous line; `images_per_s` replaces the
    measured one (the caller's own figure, e.g. the one written to metrics.jsonl).
    """
    if not self.lines:
      return
    now = time.perf_counter()
    count, then = self._mark
    per_s = (self.done - count) / max(now - then, 1e-9)
    parts = [f"{self.unit} {self.done}/{self.total}"]
    parts += [f"{k} {_field(v)}" for k, v in fields.items()]
    if images_per_s is None and self.batch_size and self.done > count:
      images_per_s = per_s * self.batch_size
    if images_per_s is not None:
      parts.append(f"{images_per_s:.0f} img/s")
    if self.done > count and self.done < self.total:
      parts.append(f"ETA {format_duration((self.total - self.done) / per_s)}")
    self._mark = (self.done, now)
    self._print("  ".join(parts))

  def line(self, message: str) -> None:
    """A line of what the run does (start, checkpoint, eval): lines mode only."""
    if self.lines:
      self._print(message)

  def write(self, message: str) -> None:
    """Text every mode shows (final tables), never inside the bar's line."""
    if self._bar is not None:
      self._bar.write(message)
    elif self.mode != "off":
      self._print(message)

  @staticmethod
  def _print(message: str) -> None:
    print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def format_eval_line(results: Mapping[str, float], image_size: Optional[int] = None) -> str:
  """'test prec@1  seqhw 2 41.20%  seqhw 4 55.00%' for every evaluator of an eval row."""
  parts = []
  for name, curve in final_eval_curves([results]).items():
    values = sorted(curve, key=lambda v: _sort_key(v, image_size))
    cells = [f"{flexi_label(v).replace('=', ' ')} {curve[v] * 100:.2f}%" for v in values]
    parts.append("  ".join([f"{name} prec@1"] + cells))
  return "   ".join(parts)


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


# ----------------------------------------------------------------------------
# Eval metric names: 'eval/<evaluator>/<flexi label>/<metric>', written and parsed here only.


def flexi_label(key: FlexiKey) -> str:
  """(("seqhw", 4),) -> 'seqhw=4'; (("patch_size", (8, 8)),) -> 'patch_size=8x8'."""
  fmt = lambda v: "x".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
  return ",".join(f"{k}={fmt(v)}" for k, v in key)


def parse_flexi_label(label: str) -> FlexiKey:
  """The inverse of `flexi_label`."""
  out = []
  for item in label.split(","):
    name, _, text = item.partition("=")
    value = tuple(int(x) for x in text.split("x")) if "x" in text else int(text)
    out.append((name, value))
  return tuple(out)


def eval_metric_name(evaluator: str, key: FlexiKey, metric: str = "prec@1") -> str:
  return f"eval/{evaluator}/{flexi_label(key)}/{metric}"


def parse_eval_metric_name(name: str) -> Optional[Tuple[str, FlexiKey, str]]:
  """'eval/test/seqhw=4/prec@1' -> ('test', (('seqhw', 4),), 'prec@1'); else None."""
  parts = name.split("/")
  if len(parts) != 4 or parts[0] != "eval":
    return None
  try:
    return parts[1], parse_flexi_label(parts[2]), parts[3]
  except ValueError:
    return None


def _seqhw_and_patch(key: FlexiKey, image_size: Optional[int]
                     ) -> Tuple[Optional[int], Optional[int]]:
  """Tokens and pixels per side of a flexi value (None where not known)."""
  side = lambda v: v if isinstance(v, int) else v[0]
  values = dict(key)
  if "seqhw" in values:
    seqhw = side(values["seqhw"])
    return seqhw, (image_size // seqhw if image_size else None)
  if "patch_size" in values:
    patch = side(values["patch_size"])
    return (image_size // patch if image_size else None), patch
  return None, None


def _sort_key(key: FlexiKey, image_size: Optional[int]):
  seqhw, patch = _seqhw_and_patch(key, image_size)
  return (seqhw if seqhw is not None else -(patch or 0), flexi_label(key))


def format_table(results: Mapping[str, Mapping[FlexiKey, float]],
                 image_size: Optional[int] = None) -> str:
  """Accuracy per flexi value (seqhw and patch side), one column per evaluator."""
  names = list(results)
  values = sorted({v for r in results.values() for v in r},
                  key=lambda v: _sort_key(v, image_size))
  header = ["seqhw", "patch"] + [f"{n} prec@1" for n in names]
  rows = []
  for v in values:
    seqhw, patch = _seqhw_and_patch(v, image_size)
    rows.append([str(dict(v).get("seqhw", seqhw if seqhw is not None else "-")),
                 str(patch if patch is not None else "-")]
                + [f"{results[n].get(v, float('nan')) * 100:6.2f}%" for n in names])
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
  if invert_x:
    ax.invert_xaxis()
  return save_plot(fig, ax, path, xlabel=xlabel, ylabel="prec@1 (%)", title=title)


def save_plot(fig, ax, path: str, *, xlabel: str, ylabel: str, title: str,
              grid_which: str = "major") -> str:
  """Labels an accuracy plot, saves it as PNG and closes it."""
  import matplotlib.pyplot as plt
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3, which=grid_which)
  ax.legend()
  ax.set_title(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # `--out plots/x.png` as typed.
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_accuracy(curves: Mapping[str, Mapping[FlexiKey, float]], path: str, *,
                  image_size: Optional[int] = None, title: str = "") -> str:
  """Writes a PNG of prec@1 against patch size (or seqhw), one line per curve."""
  lines = {}
  for label, curve in curves.items():
    xs = sorted(curve, key=lambda x: _sort_key(x, image_size))
    points = [_seqhw_and_patch(x, image_size) for x in xs]
    lines[label] = ([p if image_size or t is None else t for t, p in points],
                    [curve[x] for x in xs])
  xlabel = "patch size (px)" if image_size else "seqhw (tokens per side)"
  return _plot_lines(lines, path, xlabel=xlabel, title=title, invert_x=bool(image_size))


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
      parsed = parse_eval_metric_name(key)
      if parsed and parsed[2] == "prec@1" and [k for k, _ in parsed[1]] == ["seqhw"]:
        evaluator = evaluator or parsed[0]
        if parsed[0] == evaluator:
          accs[parsed[1][0][1]] = value
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


def final_eval_curves(rows: Iterable[Mapping[str, Any]]
                      ) -> Dict[str, Dict[FlexiKey, float]]:
  """{evaluator: {flexi key: prec@1}} from the last eval row of a metrics.jsonl."""
  last = {}
  for row in rows:
    if any(k.startswith("eval/") for k in row):
      last = row
  curves: Dict[str, Dict[FlexiKey, float]] = {}
  for key, value in last.items():
    parsed = parse_eval_metric_name(key)
    if parsed and parsed[2] == "prec@1":
      curves.setdefault(parsed[0], {})[parsed[1]] = value
  return curves
