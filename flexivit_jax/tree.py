"""Pytree paths as '/'-joined names ('Transformer/encoderblock_0/kernel').

The one owner of that format: npz checkpoint keys (`checkpoint.flatten`), train
state keys and the optimizer's weight-decay mask all name leaves with `path_name`.
"""
from __future__ import annotations

from typing import Any, Iterable

SEP = "/"


def key_name(entry: Any) -> str:
  """One path entry as text: a dict key, an attribute name, a sequence index, or a str."""
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_name(path: Iterable[Any]) -> str:
  """A pytree key path (or a sequence of names) -> 'a/b/kernel'."""
  return SEP.join(key_name(entry) for entry in path)
