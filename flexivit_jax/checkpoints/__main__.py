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
from typing import List, Optional, Sequence

from flexivit_jax import cli, paths
from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.errors import UserError


def listing(workdir: str) -> List[str]:
  """The lines of the list: one per step directory, newest last."""
  workdir = paths.normalize(workdir)
  if not step_dirs.is_train_workdir(workdir):
    raise UserError(f"{workdir!r} has no {step_dirs.CHECKPOINT_SUBDIR}/ directory; pass "
                    "a training workdir")
  rows = [(str(h.step), h.state, h.name, h.reason) for h in step_dirs.list_steps(workdir)]
  if not rows:
    return [f"no checkpoints in {step_dirs.checkpoint_dir(workdir)}"]
  head = ("step", "state", "directory", "reason")
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
  fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]
  return [fmt(head).rstrip()] + [fmt(r).rstrip() for r in rows]


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m flexivit_jax.checkpoints",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir", help="training workdir (local or gs://)")
  parser.add_argument("--restore", metavar="NAME", default=None,
                      help="put back a set-aside step: its directory name or its step number")
  return parser


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  if args.restore is not None:
    name = step_dirs.put_back(paths.normalize(args.workdir), args.restore)
    print(f"put back {name}")
    return 0
  print("\n".join(listing(args.workdir)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
