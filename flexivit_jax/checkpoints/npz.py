"""Reading, writing and adapting big_vision-format npz checkpoints.

The file format is big_vision's: `np.savez` of a flat dict whose keys are the
'/'-joined paths of a nested param dict; bfloat16 arrays are stored as 2-byte
void (`|V2`) because numpy has no bf16 and are recovered on load.

* `load_params`: a checkpoint file (local, `gs://`, a released-checkpoint
  shortcut name, or a training workdir) -> nested dict of numpy arrays, with the
  legacy layouts of older big_vision checkpoints fixed.
* `save_params` / `save_flat`: atomic writes (temp file + fsync + rename), so a
  crash mid-write never damages the previous checkpoint.
* `load_pretrained`: adapts a checkpoint to a freshly initialised model
  (posemb resampling, `dont_load`, keeping the stored patch-embedding kernel),
  refusing silently-wrong loads with a readable list of mismatches.
"""
from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any, Callable, Iterable, Optional, Sequence, Tuple, Union

import ml_dtypes
import numpy as np

from flexivit_jax import paths
from flexivit_jax import tree as tree_lib
from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.errors import UserError
from flexivit_jax.models import resize

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
LogFn = Union[Callable[[str], Any], logging.Logger, None]

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

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d{9,})\.npz$")
_BF16 = np.dtype(ml_dtypes.bfloat16)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # A file entry, or an empty archive.
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NUMBERED_RE = re.compile(r"^(.+)_(\d+)$")
_MAP_HEAD_KEYS = ("probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0")


# ---------------------------------------------------------------------------
# Paths: local vs. remote, shortcut names, training workdirs.

def _is_remote(path: str) -> bool:
  return bool(_SCHEME_RE.match(path))


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


def _exists(path: str) -> bool:
  if _is_remote(path):
    return _remote_call(_gfile().exists, path)
  return os.path.exists(path)


def _isdir(path: str) -> bool:
  if _is_remote(path):
    return _remote_call(_gfile().isdir, path)
  return os.path.isdir(path)


def _normalise_name(name: str) -> str:
  return " ".join(name.split()).lower()


_SHORTCUTS = {_normalise_name(k): v for k, v in CHECKPOINTS.items()}


def _known_names() -> str:
  return ", ".join(repr(k) for k in CHECKPOINTS)


def resolve_checkpoint(path: PathLike) -> str:
  """A shortcut name of a released checkpoint -> its URL; other paths `paths.normalize`d.

  Matching ignores case and repeated spaces ('flexivit-b  i1k' works). Does no
  I/O, so it can be tested offline.
  """
  path = os.fspath(path)
  url = _SHORTCUTS.get(_normalise_name(path))
  return url if url is not None else paths.normalize(path)


def split_subkey(path: PathLike) -> Tuple[str, Optional[str]]:
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


def latest_checkpoint(workdir: PathLike) -> Optional[str]:
  """Path of the highest-step `checkpoint_{step:09d}.npz` in `workdir`, or None.

  Temp files of interrupted writes have other names and are ignored; a file
  with the right name that is not a complete zip (e.g. copied in half) is
  skipped with a warning so a resumed run falls back to the previous step.
  """
  workdir = os.fspath(workdir)
  if not _isdir(workdir):
    return None
  names = _gfile().listdir(workdir) if _is_remote(workdir) else os.listdir(workdir)
  steps = []
  for name in names:
    m = CHECKPOINT_RE.match(name.rstrip("/"))
    if m:
      steps.append((int(m.group(1)), name))
  for _, name in sorted(steps, reverse=True):
    path = os.path.join(workdir, name) if not _is_remote(workdir) else \
        workdir.rstrip("/") + "/" + name
    if _is_complete_zip(path):
      return path
    logger.warning("skipping incomplete checkpoint %s", path)
  return None


def _is_complete_zip(path: str) -> bool:
  try:
    if _is_remote(path):
      with _gfile().GFile(path, "rb") as f:
        return zipfile.is_zipfile(f)
    return zipfile.is_zipfile(path)
  except OSError:
    return False


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
  if _is_remote(path):
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
  """Saves a nested param dict in big_vision's flat npz format, atomically."""
  save_flat(path, flatten(params))


def _missing_error(path: str, given: Optional[str] = None) -> UserError:
  """`given`: what the user typed, named first when it differs from the resolved `path`."""
  name = f"{given!r} ({path})" if given and given != path else repr(path)
  return UserError(f"checkpoint {name} does not exist; pass an existing .npz file, "
                    f"a training workdir, or one of the shortcut names: {_known_names()}")


def load_flat(path: PathLike) -> dict:
  """Reads an npz checkpoint into a flat dict of numpy arrays (bf16 recovered).

  Every array is read eagerly, so a truncated or corrupt file fails here with
  a ValueError rather than later, lazily, with a zip or EOF error.
  """
  path = os.fspath(path)
  remote = _is_remote(path)
  if not _exists(path):
    raise _missing_error(path)
  if _isdir(path):
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


# ---------------------------------------------------------------------------
# load_params.

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


def load_params(path: PathLike, step: Optional[int] = None) -> dict:
  """Loads params from a big_vision npz checkpoint as a nested dict of numpy arrays.

  Accepts: a local or `gs://` npz path, a shortcut name from `CHECKPOINTS`, a
  training workdir (the params of its newest orbax train state, or of `step`;
  a workdir of an older version: its newest `checkpoint_*.npz`), and a `file.npz:sub/key`
  suffix selecting a subtree. Training checkpoints (`params/...`) and the old
  flax optimizer layout (`opt/target/...`) yield their params; legacy layouts
  are fixed (`fix_legacy_layout`).
  """
  given, subkey = split_subkey(os.fspath(path))
  path = resolve_checkpoint(given)
  if not _exists(path):
    raise _missing_error(path, given)
  if step is not None and not (_isdir(path) and step_dirs.is_train_workdir(path)):
    raise UserError(f"step={step} needs a training workdir with orbax checkpoints; "
                    f"{path!r} is not one")
  if _isdir(path) and step_dirs.is_train_workdir(path):
    return step_dirs.read_params(path, step)  # Written by this trainer: no legacy layout.
  if _isdir(path):
    ckpt = latest_checkpoint(path)
    if ckpt is None:
      raise UserError(f"workdir {path!r} holds no complete checkpoint_{{step:09d}}.npz; "
                       "pass a workdir with a saved checkpoint, or an npz file")
    path = ckpt
  tree = unflatten(load_flat(path))
  if subkey:
    tree = _select(tree, subkey, path)
    if not isinstance(tree, dict):
      raise UserError(f"{path!r}:{subkey} is a single array, not a param tree; "
                       "select a subtree (e.g. ':params')")
  if isinstance(tree.get("params"), dict):
    tree = tree["params"]
  elif isinstance(tree.get("opt"), dict) and isinstance(tree["opt"].get("target"), dict):
    tree = tree["opt"]["target"]
  return fix_legacy_layout(tree)


# ---------------------------------------------------------------------------
# load_pretrained.

def _logger_fn(log: LogFn) -> Callable[[str], Any]:
  if log is None:
    return lambda _: None
  if isinstance(log, logging.Logger):
    return log.info
  return log


def _square(n: int, what: str) -> Tuple[int, int]:
  side = int(round(np.sqrt(n)))
  if side * side != n:
    raise UserError(f"{what} has {n} rows, not a square grid; pass posemb_hw=(h, w) "
                     "for a non-square model grid")
  return side, side


def _listing(items: Sequence[str], n: int = 8) -> str:
  shown = ", ".join(items[:n])
  more = f", ... ({len(items) - n} more)" if len(items) > n else ""
  return f"{len(items)}: {shown}{more}"


def _adapt_posemb(ckpt: dict, init: dict, report: list, posemb_hw, dont_load) -> None:
  """Splits an n*n+1 cls row off and resamples the grid to the model's (in place)."""
  pe = np.asarray(ckpt["pos_embedding"])
  model_shape = tuple(np.shape(init["pos_embedding"]))
  if pe.ndim != 3 or len(model_shape) != 3 or pe.shape[0] != 1 or pe.shape[2] != model_shape[2]:
    return  # Left to the generic shape check, which lists it.
  rows = pe.shape[1]
  if rows != model_shape[1] and int(round(np.sqrt(rows))) ** 2 != rows:
    side = int(round(np.sqrt(rows - 1)))
    if side * side == rows - 1:
      row0, pe = pe[:, :1], pe[:, 1:]
      if "cls" in ckpt and "cls" in init and not dont_load("cls"):
        ckpt["cls"] = np.asarray(ckpt["cls"]) + row0.astype(np.asarray(ckpt["cls"]).dtype)
        report.append("split the cls row off pos_embedding and added it to cls")
      else:
        report.append("dropped the cls row of pos_embedding (the model has no cls "
                      "param loaded from this checkpoint)")
  new_hw = tuple(posemb_hw) if posemb_hw else _square(model_shape[1], "model pos_embedding")
  if new_hw[0] * new_hw[1] != model_shape[1]:
    raise UserError(f"posemb_hw={posemb_hw} does not match the model's pos_embedding "
                     f"with {model_shape[1]} rows")
  if pe.shape[1] != model_shape[1]:
    old_hw = _square(pe.shape[1], "checkpoint pos_embedding")
    pe = resize.resample_posemb(pe, new_hw, old_hw=old_hw, rule="load")
    report.append(f"resampled pos_embedding from {old_hw[0]}x{old_hw[1]} to "
                  f"{new_hw[0]}x{new_hw[1]} (align-corners linear, load rule)")
  ckpt["pos_embedding"] = pe


KERNEL_LOAD_MODES = ("keep", "pi_resize")
MODEL_LOAD_KEYS = ("dont_load", "kernel")  # config.model_load: the options of load_pretrained.


def _dont_load_patterns(dont_load: Iterable[str]) -> list:
  if isinstance(dont_load, (str, bytes)):
    raise UserError(f"dont_load={dont_load!r} must be a list of regexes, not one string")
  patterns = []
  for pat in dont_load:
    try:
      patterns.append(re.compile(pat))
    except (re.error, TypeError) as e:
      raise UserError(f"dont_load pattern {pat!r} is not a valid regex ({e})") from None
  return patterns


def check_model_load(model_load: Mapping[str, Any]) -> None:
  """Checks `config.model_load` before anything is loaded: a kernel mode and regexes."""
  kernel = model_load.get("kernel", "keep")
  if kernel not in KERNEL_LOAD_MODES:
    raise UserError(f"model_load.kernel={kernel!r} is unknown; allowed: {KERNEL_LOAD_MODES} "
                    "(default 'keep'; 'pi_resize' as big_vision)")
  dont_load = model_load.get("dont_load", ())
  if not isinstance(dont_load, (list, tuple)):
    raise UserError(f"model_load.dont_load={dont_load!r} must be a list of regexes")
  _dont_load_patterns(dont_load)


def load_pretrained(init_params: Mapping, path_or_params: Union[PathLike, Mapping],
                    dont_load: Iterable[str] = (), *, log: LogFn = print,
                    posemb_hw: Optional[Sequence[int]] = None,
                    kernel: str = "keep") -> Tuple[dict, list]:
  """Adapts a checkpoint to a model whose fresh params are `init_params`.

  Returns `(params, report)`: a nested dict of numpy arrays with the structure
  and dtypes of `init_params`, and the list of changes made (also logged).
  `dont_load` holds regexes (fullmatch on '/'-joined names) of params that keep
  their init value. `posemb_hw` is the model's posemb grid, needed only when it
  is not square. Raises ValueError listing missing/unexpected keys or shape
  mismatches instead of loading a silently wrong model.
  `kernel` says what happens to an `embedding/kernel` of another patch size:
  "keep" stores it as is (PI-resized from it at every step), "pi_resize"
  PI-resizes it once to the model's patch size, as big_vision's loader does.
  """
  if kernel not in KERNEL_LOAD_MODES:
    raise UserError(f"model_load kernel={kernel!r} is unknown; allowed: {KERNEL_LOAD_MODES}")
  emit = _logger_fn(log)
  wrapped = set(init_params) == {"params"} and isinstance(init_params["params"], Mapping)
  init_flat = flatten(init_params["params"] if wrapped else init_params)

  if isinstance(path_or_params, Mapping):
    tree = dict(path_or_params)
    if any("/" in str(k) for k in tree):
      tree = unflatten(tree)
    ckpt = flatten(fix_legacy_layout(tree))
  else:
    ckpt = flatten(load_params(path_or_params))

  patterns = _dont_load_patterns(dont_load)
  skip = lambda key: any(p.fullmatch(key) for p in patterns)  # noqa: E731

  report: list = []
  for p in patterns:
    if not any(p.fullmatch(k) for k in init_flat):
      report.append(f"dont_load pattern {p.pattern!r} matched no model param")

  if "pos_embedding" in ckpt and "pos_embedding" in init_flat and not skip("pos_embedding"):
    _adapt_posemb(ckpt, init_flat, report, posemb_hw, skip)

  missing = [k for k in init_flat if k not in ckpt and not skip(k)]
  unexpected = [k for k in ckpt if k not in init_flat and not skip(k)]
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"in the model but not the checkpoint {_listing(missing)}")
    if unexpected:
      parts.append(f"in the checkpoint but not the model {_listing(unexpected)}")
    raise UserError("checkpoint does not match the model: " + "; ".join(parts) +
                     ". Pass dont_load=(regex, ...) to keep init values for model params "
                     "absent from the checkpoint.")

  out, mismatched, casts = {}, [], {}
  for key, init in init_flat.items():
    init_arr = np.asarray(init)
    if skip(key):
      out[key] = init_arr
      report.append(f"kept init for {key}")
      continue
    value = np.asarray(ckpt[key])
    if value.shape != init_arr.shape:
      if (key == "embedding/kernel" and value.ndim == 4 and init_arr.ndim == 4
          and value.shape[2:] == init_arr.shape[2:]):
        if kernel == "pi_resize":
          report.append(f"PI-resized embedding/kernel from {value.shape[0]}x{value.shape[1]} "
                        f"to the model's {init_arr.shape[0]}x{init_arr.shape[1]}")
          value = np.asarray(resize.pi_resize(value, init_arr.shape[:2]))
        else:
          report.append(f"kept the checkpoint's {value.shape[0]}x{value.shape[1]} "
                        f"embedding/kernel (model initialised "
                        f"{init_arr.shape[0]}x{init_arr.shape[1]}); it is PI-resized at run time")
      else:
        mismatched.append(f"{key}: checkpoint {value.shape} vs model {init_arr.shape}")
        continue
    if value.dtype != init_arr.dtype:
      casts.setdefault((str(value.dtype), str(init_arr.dtype)), []).append(key)
      value = value.astype(init_arr.dtype)
    out[key] = value
  if mismatched:
    raise UserError(f"checkpoint shapes do not match the model ({_listing(mismatched)}); "
                     "check the model's width/depth/heads/mlp_dim/num_classes against "
                     "the checkpoint, or dont_load the params to re-initialise")
  for (src, dst), keys in casts.items():
    report.append(f"cast {len(keys)} params from {src} to {dst}")

  for line in report:
    emit(line)
  params = unflatten(out)
  return ({"params": params} if wrapped else params), report
