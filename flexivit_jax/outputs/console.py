"""What a person watching a run sees: a bar, or plain lines for log files, with images/s and ETA."""
from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Optional

from flexivit_jax.errors import UserError

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


class Throughput:
  """Images per second between two log points."""

  def __init__(self, batch_size: int, step: int):
    self.batch_size, self._step, self._time = batch_size, step, time.perf_counter()

  def __call__(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self._step) * self.batch_size / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate
