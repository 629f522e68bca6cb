"""`flexivit-analysis NAME ARGS...` (or `python -m flexivit_jax.analysis NAME ARGS...`).

One command for the paper's analyses, each still runnable as
`python -m flexivit_jax.analysis.NAME`; `flexivit-analysis NAME --help` shows
its flags.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional, Sequence

from flexivit_jax import cli
from flexivit_jax.errors import UserError

ANALYSES = {"cka": "representations at two grids (CKA, arc-cosine, t-SNE)",
            "resize_methods": "how to resize the patch-embedding kernel (Fig. 3)",
            "zero_shot": "a PI-resized ViT against FlexiViT at every grid"}


def usage() -> str:
  return "usage: flexivit-analysis NAME [ARGS...]\n\n" + "\n".join(
      f"  {name:15s} {what}" for name, what in ANALYSES.items())


def dispatch(argv: Sequence[str]) -> None:
  args: List[str] = list(argv[1:])
  if not args or args[0] in ("-h", "--help"):
    print(usage())
    return
  name = args[0]
  if name not in ANALYSES:
    raise UserError(f"unknown analysis {name!r}; choose one of {', '.join(ANALYSES)}")
  sys.argv[0] = f"flexivit-analysis {name}"  # What argparse shows as the command in --help.
  importlib.import_module(f"flexivit_jax.analysis.{name}").main(args[1:])


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Console script `flexivit-analysis`."""
  cli.main_wrapper(dispatch, sys.argv if argv is None else argv)


if __name__ == "__main__":
  main()
