"""Lists the train-state checkpoints of a workdir, and puts a set-aside one back.

  python -m flexivit_jax.checkpoints WORKDIR                  # every step and its health
  python -m flexivit_jax.checkpoints WORKDIR --restore NAME   # undo a set-aside (name or step)

States: `complete` (what training resumes from), `partial` (a save stopped
before its commit: ignored, removed when training resumes), `damaged` (proven
by its files: the trainer sets it aside), `set aside` (renamed
`*.corrupt-<time>` earlier, with the reason), `unreadable` (its files could
not be inspected: permission, I/O, network; never set aside).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from flexivit_jax import cli, paths
from flexivit_jax.checkpoints import step_health


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(__doc__, "flexivit_jax.checkpoints")
  parser.add_argument("workdir", help="training workdir (local or gs://)")
  parser.add_argument("--restore", metavar="NAME", default=None,
                      help="put back a set-aside step: its directory name or its step number")
  return parser


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.restore is not None:
    name = step_health.put_back(paths.normalize(args.workdir), args.restore)
    print(f"put back {name}")
    return 0
  print("\n".join(step_health.listing(args.workdir)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
