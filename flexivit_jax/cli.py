"""Where exceptions become exit statuses: every command-line entry point runs through here.

    @cli.user_facing
    def main(argv=None):
      args = build_parser().parse_args(argv)   # build_parser: a cli.ArgumentParser

Expected failures end in one line on stderr and a status (`errors.py`):
`error: <message>` and 2 for bad input (`UserError`, a bad flag, a missing
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
import re
import sys
import traceback
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

from flexivit_jax import errors, xla_env

VERBOSE = "--verbose"
NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # A negative value, not a flag (as argparse).
EXIT_INTERRUPTED = 130


def exit_status(exc: BaseException) -> Optional[Tuple[int, str]]:
  """(status, line to print) for an expected failure; None for a bug."""
  if isinstance(exc, errors.TrainingDivergedError):
    return errors.EXIT_DIVERGED, f"error: {errors.one_line(exc)}"
  if isinstance(exc, errors.Preempted):
    return errors.EXIT_PREEMPTED, errors.one_line(exc)
  if isinstance(exc, KeyboardInterrupt):
    return EXIT_INTERRUPTED, "interrupted"
  if isinstance(exc, errors.UserError):
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


def example_of(doc: str) -> str:
  """The first command a module docstring shows (`python -m ...` or `flexivit-...`)."""
  lines = [" ".join(line.split("  #")[0].split()) for line in doc.splitlines()]
  return next(line for line in lines if line.startswith(("python -m ", "flexivit-")))


def prog_of(module: str) -> str:
  """What --help calls the command: the console script that runs it, else `python -m`."""
  invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  return invoked if invoked.startswith("flexivit-") else f"python -m {module}"


class ArgumentParser(argparse.ArgumentParser):
  """Every command's parser, so that all of them agree: --help is the module docstring's
  summary line, the flags, then one example command from the docstring; a flag is never
  abbreviated (a typo must not select another flag); any parse error, an unknown flag
  included, is one `UserError` line (exit 2) naming the flag and a close match."""

  def __init__(self, doc: str, module: str, **kwargs):
    super().__init__(prog=prog_of(module), description=doc.strip().splitlines()[0],
                     epilog=f"example:\n  {example_of(doc)}", allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

  def parse_args(self, args=None, namespace=None):  # pylint: disable=arguments-differ
    args = list(sys.argv[1:] if args is None else args)
    for arg in args:  # Before a missing required flag, which is often the misspelt one.
      if arg == "--":
        break
      name = arg.split("=", 1)[0]
      if arg.startswith("-") and not NUMBER.match(arg) and name not in self._option_string_actions:
        near = errors.did_you_mean(name, self._option_string_actions)
        raise errors.UserError(f"unknown flag {name}{near}; see --help")
    namespace, extra = self.parse_known_args(args, namespace)
    if extra:
      raise errors.UserError(f"unexpected argument {extra[0]!r}; see --help")
    return namespace

  def error(self, message: str) -> NoReturn:
    raise errors.UserError(message)


def add_progress_argument(parser: argparse.ArgumentParser, default: Optional[str] = "auto"
                          ) -> None:
  """`--progress auto|bar|lines|none`: what a command shows while it works (train's default,
  None, leaves it to the config's `progress`)."""
  from flexivit_jax.outputs.console import PROGRESS_MODES
  parser.add_argument("--progress", choices=PROGRESS_MODES, default=default,
                      help="a bar on a terminal, plain flushed lines (logs, pods, SLURM, nohup) "
                      "or nothing; 'auto': a bar on a terminal, lines otherwise (default: "
                      f"{default or 'the config' + chr(39) + 's progress, auto'})")


def quiet_libraries() -> None:
  """Keeps the terminal for the progress bar: libraries log warnings and up only."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("absl").setLevel(logging.WARNING)  # JAX's and orbax's logs.
  import tensorflow as tf
  tf.get_logger().setLevel("ERROR")
  logging.getLogger("flexivit_jax").setLevel(logging.INFO)
