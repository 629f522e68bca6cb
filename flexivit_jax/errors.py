"""The library's named exceptions; only the CLIs (floor 4) turn them into exit codes.

- `UserError`: the input is wrong (config, flags, data names, pp strings,
  checkpoints, mesh/batch fit). Its message names the bad value and what is
  allowed; the entry points print it as one line and exit with status 2.
  It subclasses ValueError so `except ValueError` callers keep working.
- `TrainingDivergedError`: the loss became NaN/inf (exit status 3).
- `Preempted`: SIGTERM (or a preemption notice) was honoured after saving the
  current step (exit status 143).
"""
from __future__ import annotations

import difflib
from typing import Iterable

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 143


class UserError(ValueError):
  """Bad input from the user: the message says what is wrong and what is allowed."""


class TrainingDivergedError(RuntimeError):
  """The training loss became non-finite; nothing was written for that step."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


class Preempted(Exception):
  """Training stopped on request (SIGTERM/preemption) after saving `step`."""

  def __init__(self, step: int):
    super().__init__(f"preempted: saved checkpoint at step {step}")
    self.step = step


def did_you_mean(word: object, allowed: Iterable[object]) -> str:
  """' (did you mean 'x'?)' for a near miss of an allowed name, else '': for UserErrors."""
  near = difflib.get_close_matches(str(word), [str(a) for a in allowed], n=3, cutoff=0.6)
  return f" (did you mean {' or '.join(map(repr, near))}?)" if near else ""


def one_line(text: str) -> str:
  """A message on one line: its non-empty lines joined with '; '."""
  return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
