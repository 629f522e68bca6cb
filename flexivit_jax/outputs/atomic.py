"""Files a run leaves behind, written whole or not at all, on local disks and URLs alike.

A reader (compare, evaluate, a person's `cat`) must never see half a file, even when
the writer is preempted mid-write, so every writer in outputs/ writes `PATH.tmp` and
renames it over PATH. Local paths use `os` (no TensorFlow import for a local table);
URLs (gs://) go through tf.io.gfile, which knows every scheme TensorFlow does.
"""
from __future__ import annotations

import os
import posixpath
from typing import Optional, Union

from flexivit_jax import paths


def write_atomic(path: str, content: Union[str, bytes]) -> str:
  """Writes `content` to `path` (its folder made as needed) through a renamed temp file."""
  mode = "wb" if isinstance(content, bytes) else "w"
  tmp = path + ".tmp"
  if paths.is_url(path):
    import tensorflow as tf
    tf.io.gfile.makedirs(posixpath.dirname(path))
    with tf.io.gfile.GFile(tmp, mode) as f:
      f.write(content)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # `--out plots/x.png` as typed.
  with open(tmp, mode, **({} if isinstance(content, bytes) else {"newline": ""})) as f:
    f.write(content)
  os.replace(tmp, path)
  return path


def read_text(path: str) -> Optional[str]:
  """The text of `path`, or None when there is no such file."""
  if paths.is_url(path):
    import tensorflow as tf
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "r") as f:
      return f.read()
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return f.read()
