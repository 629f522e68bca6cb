"""big_vision's npz checkpoint format: flat arrays in a zip, read and written atomically.

The file is `np.savez` of a flat dict whose keys are the '/'-joined paths of a
nested param dict; bfloat16 arrays are stored as 2-byte void (`|V2`) because
numpy has no bf16, and are recovered on load. Local paths and remote ones
(`gs://`, any scheme tf.io.gfile knows) are read and written alike.

* `flatten` / `unflatten`: nested dict <-> the flat dict of npz keys.
* `save_flat` / `save_params`: atomic writes (temp file + fsync + rename), so a
  crash mid-write never damages the previous file. `save_params` writes the
  per-block encoder layout (`encoderblock_{i}`) also for a scanned model's params
  (`layout.to_pyloop`).
* `load_flat`: every array read eagerly, so a truncated or corrupt file fails
  at once with a readable error.
* `fix_legacy_layout`: the layouts of older big_vision checkpoints, renamed to
  today's.
Where a checkpoint comes from (shortcut names, training workdirs) is
`sources`; fitting one to a model is `adapt`.
"""
from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Callable, Tuple, Union

import ml_dtypes
import numpy as np

from flexivit_jax import paths
from flexivit_jax import tree as tree_lib
from flexivit_jax.checkpoints import layout
from flexivit_jax.errors import UserError

PathLike = Union[str, os.PathLike]

_BF16 = np.dtype(ml_dtypes.bfloat16)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # A file entry, or an empty archive.
_NUMBERED_RE = re.compile(r"^(.+)_(\d+)$")
_MAP_HEAD_KEYS = ("probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0")


# ---------------------------------------------------------------------------
# Local and remote files.

def _gfile():
  """tf.io.gfile, imported only when a non-local path is used (TF is heavy)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _remote_call(fn: Callable[[str], Any], path: str) -> Any:
  """Runs a gfile query, turning an unreachable store into a readable OSError."""
  try:
    return fn(path)
  except Exception as e:  # tf.errors.OpError; TF is imported lazily, so catch broadly.
    if type(e).__module__.startswith("tensorflow"):
      raise OSError(f"cannot access checkpoint {path!r} ({type(e).__name__}: {e}); with no "
                    "network, copy the file locally and pass its local path") from e
    raise


def path_exists(path: str) -> bool:
  """os.path.exists for local paths and remote ones alike."""
  if paths.is_url(path):
    return _remote_call(_gfile().exists, path)
  return os.path.exists(path)


def is_dir(path: str) -> bool:
  """os.path.isdir for local paths and remote ones alike."""
  if paths.is_url(path):
    return _remote_call(_gfile().isdir, path)
  return os.path.isdir(path)


# ---------------------------------------------------------------------------
# Nested <-> flat dicts.

def flatten(tree: Mapping, prefix: Tuple[str, ...] = ()) -> dict:
  """Nested dict -> flat dict with '/'-joined keys (the npz key format, `tree.path_name`)."""
  flat = {}
  for key, value in tree.items():
    path = (*prefix, str(key))
    if not path[-1] or tree_lib.SEP in path[-1]:
      raise UserError(f"param name {tree_lib.path_name(path)!r} is empty or contains '/'; "
                      "names must be non-empty and '/'-free to be saved as npz keys")
    if isinstance(value, Mapping):
      flat.update(flatten(value, path))
    else:
      flat[tree_lib.path_name(path)] = value
  return flat


def unflatten(flat: Mapping[str, Any]) -> dict:
  """Flat dict with '/'-joined keys -> nested dict (inverse of `flatten`)."""
  tree: dict = {}
  for key, value in flat.items():
    parts = key.split("/")
    node = tree
    for i, part in enumerate(parts[:-1]):
      child = node.setdefault(part, {})
      if not isinstance(child, dict):
        raise UserError(f"key {'/'.join(parts[:i + 1])!r} is both an array and a prefix "
                         f"of other keys (e.g. {key!r}); the flat dict is inconsistent")
      node = child
    if isinstance(node.get(parts[-1]), dict):
      raise UserError(f"key {key!r} is both an array and a prefix of other keys")
    node[parts[-1]] = value
  return tree


# ---------------------------------------------------------------------------
# Flat npz read/write.

def _to_storable(key: str, value: Any) -> np.ndarray:
  arr = np.asarray(value)
  if arr.dtype == object:
    raise UserError(f"param {key!r} has dtype object; only numeric arrays can be saved")
  if arr.dtype == _BF16:
    arr = arr.view(np.dtype("V2"))  # big_vision's bf16 convention.
  return arr


def _recover_dtype(arr: np.ndarray) -> np.ndarray:
  """2-byte void arrays are bf16 saved by numpy, which has no bf16 dtype."""
  if arr.dtype.kind == "V" and arr.dtype.itemsize == 2 and arr.dtype.names is None:
    return arr.view(_BF16)
  return arr


def _write_npz(fileobj, flat: Mapping[str, np.ndarray]) -> None:
  """np.savez's format (uncompressed zip of .npy), without its kwarg-name limits."""
  with zipfile.ZipFile(fileobj, mode="w", compression=zipfile.ZIP_STORED,
                       allowZip64=True) as zf:
    for key, arr in flat.items():
      with zf.open(key + ".npy", "w", force_zip64=True) as f:
        np.lib.format.write_array(f, arr, allow_pickle=False)


def save_flat(path: PathLike, flat: Mapping[str, Any]) -> None:
  """Atomically writes a flat dict of arrays as npz (bf16 stored as void).

  Writes a temp file in the same directory, fsyncs it, then renames it over
  `path`: a crash at any point leaves either the old file or the new one.
  """
  path = os.fspath(path)
  arrays = {str(k): _to_storable(str(k), v) for k, v in flat.items()}
  if paths.is_url(path):
    _save_remote(path, arrays)
    return
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise UserError(f"cannot save checkpoint {path!r}: directory {directory!r} "
                     "does not exist")
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      _write_npz(f, arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise
  try:  # Persist the rename itself; not possible on every platform.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(dir_fd)
    finally:
      os.close(dir_fd)
  except OSError:
    pass


def _save_remote(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  gfile = _gfile()
  tmp = f"{path}.tmp-{os.getpid()}"
  buf = io.BytesIO()  # Remote files may not support tell()/seek() while writing.
  _write_npz(buf, arrays)
  try:
    with gfile.GFile(tmp, "wb") as f:
      f.write(buf.getvalue())
    gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if gfile.exists(tmp):
      gfile.remove(tmp)
    raise


def save_params(path: PathLike, params: Mapping) -> None:
  """Saves a nested param dict in big_vision's flat npz format, atomically.

  A scanned model's stacked `Transformer/encoderblock` is written per block, as
  big_vision's files hold it, so any model loads the file."""
  save_flat(path, flatten(layout.to_pyloop(params)))


def load_flat(path: PathLike) -> dict:
  """Reads an npz checkpoint into a flat dict of numpy arrays (bf16 recovered).

  Every array is read eagerly, so a truncated or corrupt file fails here with
  a ValueError rather than later, lazily, with a zip or EOF error.
  """
  path = os.fspath(path)
  remote = paths.is_url(path)
  if not path_exists(path):
    raise UserError(f"checkpoint {path!r} does not exist; pass an existing .npz file "
                    "(load_params also accepts a shortcut name or a training workdir)")
  if is_dir(path):
    raise UserError(f"checkpoint {path!r} is a directory; load_flat takes an npz "
                     "file (load_params also accepts a training workdir)")
  try:
    if remote:  # Read whole: remote seeks are slow or unsupported.
      with _gfile().GFile(path, "rb") as g:
        f = io.BytesIO(g.read())
    else:
      f = open(path, "rb")
    with f:
      magic = f.read(4)
      if magic not in _ZIP_MAGIC:
        raise UserError("not a zip archive")
      f.seek(0)
      with np.load(f, allow_pickle=False) as npz:
        return {k: _recover_dtype(npz[k]) for k in npz.files}
  except (zipfile.BadZipFile, EOFError, zlib.error, ValueError, OSError, KeyError) as e:
    if isinstance(e, (FileNotFoundError, PermissionError)):
      raise
    raise UserError(f"checkpoint {path!r} is truncated or corrupt ({type(e).__name__}: "
                     f"{e}); re-download or re-save it") from e


# ---------------------------------------------------------------------------
# Legacy layouts of older big_vision checkpoints.

def _renumber_per_type(block: dict) -> dict:
  """{LayerNorm_0, MHDPA_1, LayerNorm_2, MlpBlock_3} -> per-type numbering.

  Idempotent: a block already numbered per type is returned unchanged.
  """
  numbered = []
  for key in block:
    m = _NUMBERED_RE.match(key)
    if m:
      numbered.append((int(m.group(2)), m.group(1), key))
  counts: dict = {}
  renamed = {}
  for _, kind, key in sorted(numbered):
    renamed[key] = f"{kind}_{counts.get(kind, 0)}"
    counts[kind] = counts.get(kind, 0) + 1
  return {renamed.get(k, k): v for k, v in block.items()}


def _fix_blocks(tree: dict) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      value = _fix_blocks(value)
      if re.fullmatch(r"encoderblock_\d+", key):
        value = _renumber_per_type(value)
    out[key] = value
  return out


def fix_legacy_layout(params: dict) -> dict:
  """Fixes the layouts of older checkpoints (SPEC 3); returns a new dict.

  Renumbers pre-linen block submodules per type, moves a posemb stored inside
  `Transformer` to the top level and moves an inlined MAP head under
  `MAPHead_0`. The cls row of an n*n+1 posemb depends on the model and is
  handled by `load_pretrained`.
  """
  params = _fix_blocks(params)
  enc = params.get("Transformer")
  if isinstance(enc, dict) and "pos_embedding" not in params:
    enc = dict(enc)
    inp = enc.get("posembed_input")
    if isinstance(inp, dict) and "pos_embedding" in inp:
      inp = dict(inp)
      params["pos_embedding"] = inp.pop("pos_embedding")
      if inp:
        enc["posembed_input"] = inp
      else:
        del enc["posembed_input"]
    elif "pos_embedding" in enc:
      params["pos_embedding"] = enc.pop("pos_embedding")
    params["Transformer"] = enc
  if "probe" in params and "MAPHead_0" not in params:
    params["MAPHead_0"] = {k: params.pop(k) for k in _MAP_HEAD_KEYS if k in params}
  return params
