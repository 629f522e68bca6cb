"""Fitting a checkpoint to a freshly initialised model: `load_pretrained`.

big_vision's loaders adapt a checkpoint to the model they load it into, and so
does this one, in named steps: read the checkpoint as flat npz keys; match its
keys to the model's (params named by `dont_load` keep their init value); move a
posemb's cls row to `cls` and resample the posemb grid to the model's; keep or
PI-resize a patch-embedding kernel of another patch size; cast to the model's
dtypes. Anything else that differs is refused with a readable list, instead of
loading a silently wrong model. Every change made is reported.

The matching works on the per-block encoder layout (`encoderblock_{i}`, the names
`dont_load` patterns use) whatever layout the checkpoint and the model hold; for a
scanned model the result is restacked (`layout`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from flexivit_jax.checkpoints import layout, npz, sources
from flexivit_jax.errors import UserError
from flexivit_jax.models import resize

LogFn = Union[Callable[[str], Any], logging.Logger, None]
Matcher = Callable[[str], bool]

# What happens to a stored `embedding/kernel` of another patch size (`kernel=`).
KERNEL_LOAD_MODES = ("keep", "pi_resize")
MODEL_LOAD_KEYS = ("dont_load", "kernel")  # config.model_load: the options of load_pretrained.


def check_model_load(model_load: Mapping[str, Any]) -> None:
  """Checks `config.model_load` before anything is loaded: a kernel mode and regexes."""
  kernel = model_load.get("kernel", "keep")
  if kernel not in KERNEL_LOAD_MODES:
    raise UserError(f"model_load.kernel={kernel!r} is unknown; allowed: {KERNEL_LOAD_MODES} "
                    "(default 'keep'; 'pi_resize' as big_vision)")
  dont_load = model_load.get("dont_load", ())
  if not isinstance(dont_load, (list, tuple)):
    raise UserError(f"model_load.dont_load={dont_load!r} must be a list of regexes")
  _compile_patterns(dont_load)


def load_pretrained(init_params: Mapping, path_or_params: Union[npz.PathLike, Mapping],
                    dont_load: Iterable[str] = (), *, log: LogFn = print,
                    posemb_hw: Optional[Sequence[int]] = None,
                    kernel: str = "keep") -> Tuple[dict, list]:
  """Adapts a checkpoint to a model whose fresh params are `init_params`.

  Returns `(params, report)`: a nested dict of numpy arrays with the structure
  and dtypes of `init_params`, and the list of changes made (also logged).
  `init_params` may be the params or the variables `{"params": ...}` (returned
  alike). `path_or_params` is anything `sources.load_params` reads, or params
  already in memory (nested, or flat with '/'-joined keys). `dont_load` holds
  regexes (fullmatch on '/'-joined names) of params that keep their init value.
  `posemb_hw` is the model's posemb grid, needed only when it is not square.
  Raises ValueError listing missing/unexpected keys or shape mismatches instead
  of loading a silently wrong model.
  `kernel` says what happens to an `embedding/kernel` of another patch size:
  "keep" stores it as is (PI-resized from it at every step), "pi_resize"
  PI-resizes it once to the model's patch size, as big_vision's loader does.
  """
  if kernel not in KERNEL_LOAD_MODES:
    raise UserError(f"model_load kernel={kernel!r} is unknown; allowed: {KERNEL_LOAD_MODES}")
  wrapped = set(init_params) == {"params"} and isinstance(init_params["params"], Mapping)
  init_tree = init_params["params"] if wrapped else init_params
  scanned = layout.is_scanned(init_tree)
  init_flat = npz.flatten(layout.to_pyloop(init_tree))
  ckpt = _checkpoint_flat(path_or_params)
  patterns = _compile_patterns(dont_load)
  skip = lambda key: any(p.fullmatch(key) for p in patterns)  # noqa: E731

  report = _unmatched_patterns(patterns, init_flat)
  if "pos_embedding" in ckpt and "pos_embedding" in init_flat and not skip("pos_embedding"):
    report += _adapt_posemb(ckpt, init_flat, posemb_hw, skip)
  _check_keys_match(init_flat, ckpt, skip)
  params, fitted = _fit_to_model(init_flat, ckpt, skip, kernel)
  report += fitted

  emit = _logger_fn(log)
  for line in report:
    emit(line)
  params = layout.to_layout(npz.unflatten(params), scanned)
  return ({"params": params} if wrapped else params), report


# ---------------------------------------------------------------------------
# Reading the checkpoint and the dont_load patterns.

def _checkpoint_flat(path_or_params: Union[npz.PathLike, Mapping]) -> Dict[str, Any]:
  """The checkpoint's params as flat '/'-joined keys, in today's layout."""
  if not isinstance(path_or_params, Mapping):
    return npz.flatten(sources.load_params(path_or_params))
  tree = dict(path_or_params)
  if any("/" in str(k) for k in tree):
    tree = npz.unflatten(tree)
  return npz.flatten(layout.to_pyloop(npz.fix_legacy_layout(tree)))


def _compile_patterns(dont_load: Iterable[str]) -> List[re.Pattern]:
  if isinstance(dont_load, (str, bytes)):
    raise UserError(f"dont_load={dont_load!r} must be a list of regexes, not one string")
  patterns = []
  for pat in dont_load:
    try:
      patterns.append(re.compile(pat))
    except (re.error, TypeError) as e:
      raise UserError(f"dont_load pattern {pat!r} is not a valid regex ({e})") from None
  return patterns


def _unmatched_patterns(patterns: List[re.Pattern], init_flat: Mapping) -> List[str]:
  """Report lines for dont_load patterns that name no model param (a likely typo)."""
  return [f"dont_load pattern {p.pattern!r} matched no model param"
          for p in patterns if not any(p.fullmatch(k) for k in init_flat)]


# ---------------------------------------------------------------------------
# The position embedding.

def _square(n: int, what: str) -> Tuple[int, int]:
  side = int(round(np.sqrt(n)))
  if side * side != n:
    raise UserError(f"{what} has {n} rows, not a square grid; pass posemb_hw=(h, w) "
                    "for a non-square model grid")
  return side, side


def _adapt_posemb(ckpt: dict, init: Mapping, posemb_hw, dont_load: Matcher) -> List[str]:
  """Splits an n*n+1 cls row off and resamples the grid to the model's (in place).

  Returns the report lines. A posemb of another rank or width is left to the
  key and shape checks, which list it.
  """
  pe = np.asarray(ckpt["pos_embedding"])
  model_shape = tuple(np.shape(init["pos_embedding"]))
  if pe.ndim != 3 or len(model_shape) != 3 or pe.shape[0] != 1 or pe.shape[2] != model_shape[2]:
    return []
  report: List[str] = []
  rows = pe.shape[1]
  if rows != model_shape[1] and _is_square_plus_one(rows):
    pe = _move_cls_row(ckpt, init, pe, dont_load, report)
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
  return report


def _is_square_plus_one(rows: int) -> bool:
  """An n*n+1-row posemb: a grid with a cls row first (older ViT checkpoints)."""
  if int(round(np.sqrt(rows))) ** 2 == rows:
    return False
  side = int(round(np.sqrt(rows - 1)))
  return side * side == rows - 1


def _move_cls_row(ckpt: dict, init: Mapping, pe: np.ndarray, dont_load: Matcher,
                  report: List[str]) -> np.ndarray:
  """The grid rows of `pe`; its cls row is added to a loaded `cls`, else dropped."""
  row0, pe = pe[:, :1], pe[:, 1:]
  if "cls" in ckpt and "cls" in init and not dont_load("cls"):
    cls = np.asarray(ckpt["cls"])
    ckpt["cls"] = cls + row0.astype(cls.dtype)
    report.append("split the cls row off pos_embedding and added it to cls")
  else:
    report.append("dropped the cls row of pos_embedding (the model has no cls "
                  "param loaded from this checkpoint)")
  return pe


# ---------------------------------------------------------------------------
# Matching keys, shapes and dtypes.

def _listing(items: Sequence[str], n: int = 8) -> str:
  shown = ", ".join(items[:n])
  more = f", ... ({len(items) - n} more)" if len(items) > n else ""
  return f"{len(items)}: {shown}{more}"


def _check_keys_match(init_flat: Mapping, ckpt: Mapping, dont_load: Matcher) -> None:
  """Refuses a checkpoint that lacks model params or holds others (dont_load aside)."""
  missing = [k for k in init_flat if k not in ckpt and not dont_load(k)]
  unexpected = [k for k in ckpt if k not in init_flat and not dont_load(k)]
  if not (missing or unexpected):
    return
  parts = []
  if missing:
    parts.append(f"in the model but not the checkpoint {_listing(missing)}")
  if unexpected:
    parts.append(f"in the checkpoint but not the model {_listing(unexpected)}")
  raise UserError("checkpoint does not match the model: " + "; ".join(parts) +
                  ". Pass dont_load=(regex, ...) to keep init values for model params "
                  "absent from the checkpoint.")


def _is_patch_kernel_of_other_size(key: str, value: np.ndarray, init: np.ndarray) -> bool:
  """A patch-embedding kernel that differs only in its patch size (the first two axes)."""
  return (key == "embedding/kernel" and value.ndim == 4 and init.ndim == 4
          and value.shape[2:] == init.shape[2:])


def _load_patch_kernel(value: np.ndarray, init_shape: Tuple[int, ...], kernel: str,
                       report: List[str]) -> np.ndarray:
  """The stored patch kernel as `kernel` says: kept as is, or PI-resized once."""
  (ph, pw), (mh, mw) = value.shape[:2], init_shape[:2]
  if kernel == "pi_resize":
    report.append(f"PI-resized embedding/kernel from {ph}x{pw} to the model's {mh}x{mw}")
    return np.asarray(resize.pi_resize(value, init_shape[:2]))
  report.append(f"kept the checkpoint's {ph}x{pw} embedding/kernel (model initialised "
                f"{mh}x{mw}); it is PI-resized at run time")
  return value


def _fit_to_model(init_flat: Mapping, ckpt: Mapping, dont_load: Matcher,
                  kernel: str) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """Each model param: its init value (dont_load) or the checkpoint's, fitted to the
  model's shape (patch kernels only) and cast to its dtype. Returns (flat params, report)."""
  out, report, mismatched, casts = {}, [], [], {}
  for key, init in init_flat.items():
    init_arr = np.asarray(init)
    if dont_load(key):
      out[key] = init_arr
      report.append(f"kept init for {key}")
      continue
    value = np.asarray(ckpt[key])
    if value.shape != init_arr.shape:
      if not _is_patch_kernel_of_other_size(key, value, init_arr):
        mismatched.append(f"{key}: checkpoint {value.shape} vs model {init_arr.shape}")
        continue
      value = _load_patch_kernel(value, init_arr.shape, kernel, report)
    if value.dtype != init_arr.dtype:
      casts.setdefault((str(value.dtype), str(init_arr.dtype)), []).append(key)
      value = value.astype(init_arr.dtype)
    out[key] = value
  if mismatched:
    raise UserError(f"checkpoint shapes do not match the model ({_listing(mismatched)}); "
                    "check the model's width/depth/heads/mlp_dim/num_classes against "
                    "the checkpoint, or dont_load the params to re-initialise")
  report += [f"cast {len(keys)} params from {src} to {dst}" for (src, dst), keys in casts.items()]
  return out, report


def _logger_fn(log: LogFn) -> Callable[[str], Any]:
  if log is None:
    return lambda _: None
  if isinstance(log, logging.Logger):
    return log.info
  return log
