"""Where exceptions become exit statuses: every command-line entry point runs through here.

    def run():
      cli.run_absl(main)            # absl-flag CLIs (train)
      cli.main_wrapper(main)        # any other main(argv), e.g. argparse

Expected failures end in one line on stderr and a status (`errors.py`):
`error: <message>` and 2 for bad input (`UserError`, flag errors, a missing
or unreadable file), `error: <message>` and 3 for divergence, `preempted: ...` and 143,
`interrupted` and 130 on Ctrl-C. `--verbose` (taken out of argv before the
CLI's own parser sees it) adds the traceback. Anything else is a bug and
keeps its traceback (status 1). Every command also gets the CPU XLA settings of
`xla_env` before it starts JAX, and those that show progress quiet the libraries'
logs (`quiet_libraries`).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import traceback
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

from absl import app, flags
from absl import logging as absl_logging

from flexivit_jax import errors, xla_env

VERBOSE = "--verbose"
EXIT_INTERRUPTED = 130


def exit_status(exc: BaseException) -> Optional[Tuple[int, str]]:
  """(status, line to print) for an expected failure; None for a bug."""
  if isinstance(exc, errors.TrainingDivergedError):
    return errors.EXIT_DIVERGED, f"error: {errors.one_line(exc)}"
  if isinstance(exc, errors.Preempted):
    return errors.EXIT_PREEMPTED, errors.one_line(exc)
  if isinstance(exc, KeyboardInterrupt):
    return EXIT_INTERRUPTED, "interrupted"
  if isinstance(exc, (errors.UserError, flags.Error)):
    return errors.EXIT_USER_ERROR, f"error: {errors.one_line(exc)}"
  if isinstance(exc, FileNotFoundError):
    return errors.EXIT_USER_ERROR, f"error: no such file: {exc.filename or errors.one_line(exc)}"
  if isinstance(exc, PermissionError):
    return errors.EXIT_USER_ERROR, (f"error: permission denied: {exc.filename or errors.one_line(exc)}"
                                    "; check the permissions of that path")
  return None


def _call(fn: Callable[[], Any], verbose: bool) -> Any:
  """fn(); an expected failure becomes its one line on stderr and SystemExit(status)."""
  xla_env.apply_cpu_defaults()  # Before the command starts JAX.
  try:
    return fn()
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-except
    mapped = exit_status(e)
    if mapped is None:
      raise  # A bug: Python prints the traceback.
    if verbose:
      traceback.print_exc()
    sys.stderr.flush()
    print(mapped[1], file=sys.stderr, flush=True)
    raise SystemExit(mapped[0]) from None


def _split_verbose(argv: Sequence[str]) -> Tuple[List[str], bool]:
  return [a for a in argv if a != VERBOSE], VERBOSE in argv


def main_wrapper(main: Callable[[List[str]], Any], argv: Optional[Sequence[str]] = None
                 ) -> NoReturn:
  """Runs `main(argv)` and exits with its status, mapping expected failures to one line."""
  argv = list(sys.argv if argv is None else argv)
  rest, verbose = _split_verbose(argv[1:])
  sys.exit(_call(lambda: main(argv[:1] + rest), verbose))


def user_facing(main: Callable[..., Any]) -> Callable[..., Any]:
  """Decorates an argparse `main(argv=None)` so it can be called in-process (tests, notebooks)
  or as a script: expected failures end as one line and SystemExit(status), as main_wrapper."""
  @functools.wraps(main)
  def wrapped(argv: Optional[Sequence[str]] = None, *args, **kwargs):
    rest, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    return _call(lambda: main(rest, *args, **kwargs), verbose)
  return wrapped


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
  """`--progress auto|bar|lines|none` for an argparse CLI (the train CLI has the absl flag)."""
  from flexivit_jax.outputs.console import PROGRESS_MODES
  parser.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                      help="a bar on a terminal, plain flushed lines (logs, pods, SLURM, nohup) "
                      "or nothing; 'auto' (default): a bar on a terminal, lines otherwise")


def quiet_libraries() -> None:
  """Keeps the terminal for the progress bar: libraries log warnings and up only."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  absl_logging.set_verbosity(absl_logging.WARNING)
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")
  logging.getLogger("flexivit_jax").setLevel(logging.INFO)


def parse_absl_flags(argv: Sequence[str]) -> List[str]:
  """absl's FLAGS(argv), with any parse failure (bad value, unknown flag) as a UserError."""
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    raise errors.UserError(errors.one_line(e)) from e


def run_absl(main: Callable[[Any], Any], argv: Optional[Sequence[str]] = None,
             flags_parser: Callable[[List[str]], Any] = parse_absl_flags) -> NoReturn:
  """`absl.app.run(main)` whose flag errors and failures end as `main_wrapper` says."""
  main_wrapper(lambda args: app.run(main, argv=args, flags_parser=flags_parser), argv)
