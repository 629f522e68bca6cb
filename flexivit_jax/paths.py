"""The one owner of turning a path a user typed into the path the code uses.

Users type relative paths (`workdirs/demo`, `.`, `..`), `~/runs` (usually
expanded by the shell, not always: a config value or a Python call keeps it),
symlinked directories and `gs://` URLs. orbax accepts only absolute paths, and
a path that means one thing at the start of a run must mean the same thing
after a library changes the current directory. So every entry point that takes
a path from a user (the CLIs, `train_and_evaluate`, `load_params`,
`StateCheckpoints`, the workdir layout in `checkpoints.step_dirs`) passes it through
`normalize` once, and everything below works with absolute paths only.

Symlinks are kept as typed (`abspath`, not `realpath`): the user named the
link, and messages should show the name they know.
"""
from __future__ import annotations

import os
import re
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str) -> bool:
  """True for `scheme://...` paths (gs://, s3://, ram://): never made absolute."""
  return bool(_URL_RE.match(os.fspath(path)))


def makedirs(path: str) -> None:
  """Makes folder `path` and its parents, on a local disk or at a URL (through tf.io.gfile).

  `os.makedirs("gs://b/run")` would quietly make a local folder named `gs:`; a run's
  workdir on a bucket must be made where the run writes it.
  """
  if is_url(path):
    import tensorflow as tf  # Only for URLs: TF is heavy.
    tf.io.gfile.makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def normalize(path: PathLike) -> str:
  """An absolute local path (`~` expanded, `.`/`..` folded) or the URL unchanged.

  Trailing slashes are dropped (except the root), so `run/` and `run` name the
  same workdir everywhere.
  """
  text = os.fspath(path)
  if not text:
    return text
  if is_url(text):
    scheme, _, rest = text.partition("://")
    return f"{scheme}://{rest.rstrip('/')}" if rest.strip("/") else text
  return os.path.abspath(os.path.expanduser(text))
