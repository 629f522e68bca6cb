"""Where params come from: an npz file, a released checkpoint's name, or a training workdir.

`load_params` is the one reader every entry point uses (`model_init`, teachers,
evaluate, export, the analyses). It accepts
* a local or remote (`gs://`) npz file in big_vision's format (`npz`);
* a shortcut name of a released FlexiViT checkpoint (`CHECKPOINTS`), which
  `resolve_checkpoint` turns into its URL without any I/O;
* a training workdir: the params of its newest orbax train state, or of `step`
  (`read_params`, through the layout `step_dirs` owns);
* a `file.npz:sub/key` suffix (`split_subkey`) selecting a subtree of the file.
Params always come back in the per-block encoder layout (`encoderblock_{i}`), also
from a scanned run's workdir (`layout.to_pyloop`); `layout.for_model` restacks them
for a scanned model.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np

from flexivit_jax import paths
from flexivit_jax.checkpoints import layout, npz, step_dirs, step_health
from flexivit_jax.errors import UserError

# Released FlexiViT checkpoints (SPEC 4): shortcut name -> big_vision URL.
CHECKPOINTS = {
    "FlexiViT-L i1k": "gs://big_vision/flexivit/flexivit_l_i1k.npz",
    "FlexiViT-B i1k": "gs://big_vision/flexivit/flexivit_b_i1k.npz",
    "FlexiViT-S i1k": "gs://big_vision/flexivit/flexivit_s_i1k.npz",
    "FlexiViT-B i21k 90ep": "gs://big_vision/flexivit/flexivit_b_i21k_90ep.npz",
    "FlexiViT-B i21k 300ep": "gs://big_vision/flexivit/flexivit_b_i21k_300ep.npz",
    "FlexiViT-B i21k 1000ep": "gs://big_vision/flexivit/flexivit_b_i21k_1000ep.npz",
    "ViT-B/16 i21k": "gs://big_vision/flexivit/vit_b16_i21k_300ep.npz",
    "ViT-B/30 i21k": "gs://big_vision/flexivit/vit_b30_i21k_300ep.npz",
}


# ---------------------------------------------------------------------------
# Names and paths.

def _normalise_name(name: str) -> str:
  return " ".join(name.split()).lower()


_SHORTCUTS = {_normalise_name(k): v for k, v in CHECKPOINTS.items()}


def resolve_checkpoint(path: npz.PathLike) -> str:
  """A shortcut name of a released checkpoint -> its URL; other paths `paths.normalize`d.

  Matching ignores case and repeated spaces ('flexivit-b  i1k' works). Does no
  I/O, so it can be tested offline.
  """
  path = os.fspath(path)
  url = _SHORTCUTS.get(_normalise_name(path))
  return url if url is not None else paths.normalize(path)


def split_subkey(path: npz.PathLike) -> Tuple[str, Optional[str]]:
  """'file.npz:sub/key' -> ('file.npz', 'sub/key'); no suffix -> (path, None).

  The suffix is only recognised after '.npz' or after a shortcut name, so the
  ':' of 'gs://' and of Windows drives is never taken for one.
  """
  path = os.fspath(path)
  m = re.match(r"^(.*\.npz):([^/:][^:]*)$", path)
  if m:
    return m.group(1), m.group(2).strip("/")
  head, sep, tail = path.rpartition(":")
  if sep and _normalise_name(head) in _SHORTCUTS and tail:
    return head, tail.strip("/")
  return path, None


def _missing_error(path: str, given: str) -> UserError:
  """`given`: what the user typed, named first when it differs from the resolved `path`."""
  name = f"{given!r} ({path})" if given != path else repr(path)
  known = ", ".join(repr(k) for k in CHECKPOINTS)
  return UserError(f"checkpoint {name} does not exist; pass an existing .npz file, "
                   f"a training workdir, or one of the shortcut names: {known}")


# ---------------------------------------------------------------------------
# Training workdirs: the params of an orbax train state.

def read_params(workdir: str, step: Optional[int] = None) -> Dict:
  """The params of `step` (default: the newest complete one) as numpy arrays.

  Reads only the params subtree, whatever mesh wrote it; no devices needed. A scanned
  run's stacked blocks come back per block.
  """
  return layout.to_pyloop(read_state(workdir, step, only="params")["params"])


def read_state(workdir: str, step: Optional[int] = None, only: Optional[str] = None) -> Dict:
  """The train state of `step` (or only its top-level key `only`) as numpy arrays.

  Optimizer states come back as plain dicts/lists (orbax's stored structure). A
  step that fails to read is one UserError saying whether its files are damaged.
  """
  steps = step_dirs.complete_steps(workdir)
  if not steps:
    raise UserError(f"workdir {workdir!r} holds no complete train-state checkpoint "
                    f"under {step_dirs.CHECKPOINT_SUBDIR}/; pass a workdir with a saved "
                    "checkpoint")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise UserError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                    f"it has steps {steps}")
  path = step_dirs.item_path(workdir, step)
  try:
    out = step_dirs.retrying(lambda: _read_item(path, only), f"checkpoint {path}",
                             step_dirs.default_tries(workdir))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # Judged from the files below.
    raise step_health.unreadable_error(workdir, step, e) from e
  return jax.tree.map(np.asarray, out)


def _read_item(path: str, only: Optional[str]) -> Dict:
  import orbax.checkpoint as ocp  # Imported on use: loading orbax takes a second.
  ckptr = ocp.PyTreeCheckpointer()
  tree = ckptr.metadata(path).item_metadata.tree
  tree = {only: tree[only]} if only else tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ckptr.restore(path, args=ocp.args.PyTreeRestore(
      item=tree, restore_args=args, partial_restore=bool(only)))


# ---------------------------------------------------------------------------
# npz files: the param tree inside.

def _select(tree: dict, subkey: str, path: str) -> Any:
  node: Any = tree
  for i, part in enumerate(subkey.split("/")):
    if not isinstance(node, dict) or part not in node:
      where = "/".join(subkey.split("/")[:i]) or "the top level"
      avail = sorted(node) if isinstance(node, dict) else []
      raise UserError(f"checkpoint {path!r} has no key {subkey!r}: {part!r} is not in "
                      f"{where}; available there: {avail[:20]}")
    node = node[part]
  return node


def _params_in(tree: dict, path: str, subkey: Optional[str]) -> dict:
  """The param tree of an npz file's contents, in today's layout.

  `subkey` selects a subtree first; then a training checkpoint's `params/...`
  or the old flax optimizer's `opt/target/...` yields its params, and legacy
  layouts are fixed (`npz.fix_legacy_layout`).
  """
  if subkey:
    tree = _select(tree, subkey, path)
    if not isinstance(tree, dict):
      raise UserError(f"{path!r}:{subkey} is a single array, not a param tree; "
                      "select a subtree (e.g. ':params')")
  if isinstance(tree.get("params"), dict):
    tree = tree["params"]
  elif isinstance(tree.get("opt"), dict) and isinstance(tree["opt"].get("target"), dict):
    tree = tree["opt"]["target"]
  return layout.to_pyloop(npz.fix_legacy_layout(tree))


def load_params(path: npz.PathLike, step: Optional[int] = None) -> dict:
  """Loads params as a nested dict of numpy arrays, from any source the module docstring lists.

  `step` picks a training workdir's step (default: the newest). Params from a
  training workdir were written by this trainer: they need no layout fixes.
  """
  given, subkey = split_subkey(os.fspath(path))
  path = resolve_checkpoint(given)
  if not npz.path_exists(path):
    raise _missing_error(path, given)
  is_workdir = npz.is_dir(path) and step_dirs.is_train_workdir(path)
  if step is not None and not is_workdir:
    raise UserError(f"step={step} needs a training workdir with orbax checkpoints; "
                    f"{path!r} is not one")
  if is_workdir:
    return read_params(path, step)
  if npz.is_dir(path):
    raise UserError(f"{path!r} is a directory but not a training workdir (it has no "
                    f"{step_dirs.CHECKPOINT_SUBDIR}/ of train states); pass a training "
                    "workdir or an npz file")
  return _params_in(npz.unflatten(npz.load_flat(path)), path, subkey)
