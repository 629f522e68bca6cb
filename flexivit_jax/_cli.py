"""Stand-in for `flexivit_jax.cli.main_wrapper` (issue 7) until it lands on main.

Turns the library's named exceptions into one `error: ...` line on stderr and
the exit status of `flexivit_jax.errors`; swap for `cli.main_wrapper` then.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable

from flexivit_jax import errors


def main_wrapper(main: Callable) -> Callable:
  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except errors.UserError as e:
      print(f"error: {e}", file=sys.stderr)
      raise SystemExit(errors.EXIT_USER_ERROR) from None
    except errors.TrainingDivergedError as e:
      print(f"error: training diverged: {e}", file=sys.stderr)
      raise SystemExit(errors.EXIT_DIVERGED) from None
    except errors.Preempted as e:
      print(str(e), file=sys.stderr)
      raise SystemExit(errors.EXIT_PREEMPTED) from None
  return wrapped
