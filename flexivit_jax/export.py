"""Exports the params of a training workdir as a big_vision npz.

  python -m flexivit_jax.export WORKDIR out.npz [--step N]
  python -m flexivit_jax.export WORKDIR --list     # which steps there are, and their health

Reads the newest (or step N's) orbax train-state checkpoint of WORKDIR (local or
gs://), keeps only the params, and writes them with `npz.save_params`;
`flexivit_jax.load_params(out.npz)` reads back the same arrays. A run with
`model.scan` writes the same per-block names (`encoderblock_{i}`) as any other.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from flexivit_jax import cli, paths


def export(workdir: str, out: str, step: Optional[int] = None) -> None:
  from flexivit_jax.checkpoints import npz, sources
  npz.save_params(out, sources.load_params(workdir, step=step))


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(__doc__, "flexivit_jax.export")
  parser.add_argument("workdir", help="training workdir (local or gs://)")
  parser.add_argument("out", nargs="?", default=None, type=paths.normalize,
                      help="the npz to write")
  parser.add_argument("--step", type=int, default=None, help="step to export (default: newest)")
  parser.add_argument("--list", action="store_true",
                      help="list the workdir's steps and their health instead "
                      "(as python -m flexivit_jax.checkpoints WORKDIR)")
  return parser


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.list:
    from flexivit_jax.checkpoints import step_health
    print("\n".join(step_health.listing(args.workdir)))
    return 0
  if args.out is None:
    parser.error("the npz to write (out) is required unless --list is given")
  export(args.workdir, args.out, args.step)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
