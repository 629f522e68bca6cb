"""The encoder's two param layouts: per block (what checkpoints store) and scanned.

A model with `scan=False` holds `Transformer/encoderblock_{i}/...` (big_vision's
names, the layout of every npz file); one with `scan=True` holds a single
`Transformer/encoderblock/...` whose arrays carry a leading axis of length
`depth`. Files always hold the per-block layout whatever the model in memory
used, so a scanned run's checkpoints load into an unscanned model and back:

* `sources.load_params` returns the per-block layout (`to_pyloop`), also from a
  scanned run's workdir or a stacked npz;
* `npz.save_params` writes the per-block layout (`to_pyloop`);
* `adapt.load_pretrained` fits a checkpoint of either layout to a model of
  either layout (it works per block and restacks when the model is scanned);
* `for_model` converts params to what a given model's `apply` takes.

Written from the layout big_vision's `pyloop_to_scan` converts (SPEC 9).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Dict

import numpy as np

from flexivit_jax.errors import UserError

ENCODER = "Transformer"
SCANNED_BLOCK = "encoderblock"
_BLOCK_RE = re.compile(r"^encoderblock_(\d+)$")


def _map_leaves(fn, tree):
  if isinstance(tree, Mapping):
    return {k: _map_leaves(fn, v) for k, v in tree.items()}
  return fn(tree)


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def _stack(trees):
  """Leafwise np.stack of same-structured dicts along a new leading axis."""
  first = trees[0]
  if isinstance(first, Mapping):
    return {k: _stack([t[k] for t in trees]) for k in first}
  return np.stack([np.asarray(t) for t in trees])


def is_scanned(params: Mapping) -> bool:
  """Whether `params` (a param tree, not `{"params": ...}`) hold the scanned layout."""
  encoder = params.get(ENCODER)
  return isinstance(encoder, Mapping) and SCANNED_BLOCK in encoder


def _per_block_names(encoder: Mapping) -> Dict[int, str]:
  numbered = {}
  for key in encoder:
    m = _BLOCK_RE.match(key)
    if m:
      numbered[int(m.group(1))] = key
  return numbered


def to_pyloop(params: Mapping) -> dict:
  """The per-block layout: a stacked `encoderblock` split into `encoderblock_{i}`.

  Params already per block are returned as they are (a shallow copy); leaves stay
  the arrays they were (numpy, jax), indexed along the leading axis.
  """
  params = dict(params)
  if not is_scanned(params):
    return params
  encoder = dict(params[ENCODER])
  stacked = encoder.pop(SCANNED_BLOCK)
  depths = {np.shape(a)[0] if np.ndim(a) else None for a in _leaves(stacked)}
  if len(depths) != 1 or None in depths:
    raise UserError(f"{ENCODER}/{SCANNED_BLOCK} is not a stack of blocks: its arrays have "
                    f"leading axes {sorted(map(str, depths))}; expected one depth")
  if _per_block_names(encoder):
    raise UserError(f"{ENCODER} holds both {SCANNED_BLOCK} and {SCANNED_BLOCK}_<i>; "
                    "a checkpoint has one layout")
  (depth,) = depths
  for i in range(depth):
    encoder[f"{SCANNED_BLOCK}_{i}"] = _map_leaves(lambda a, i=i: a[i], stacked)
  params[ENCODER] = encoder
  return params


def to_scan(params: Mapping) -> dict:
  """The scanned layout: `encoderblock_0..depth-1` stacked into one `encoderblock`.

  Params already scanned are returned as they are (a shallow copy). The blocks must
  be numbered 0..depth-1 without gaps and share their structure and shapes.
  """
  params = dict(params)
  encoder = params.get(ENCODER)
  if not isinstance(encoder, Mapping) or is_scanned(params):
    return params
  encoder = dict(encoder)
  numbered = _per_block_names(encoder)
  if not numbered:
    return params
  if sorted(numbered) != list(range(len(numbered))):
    raise UserError(f"cannot stack {ENCODER} blocks numbered {sorted(numbered)}: the "
                    f"scanned layout needs {SCANNED_BLOCK}_0..{SCANNED_BLOCK}_{len(numbered) - 1}")
  blocks = [encoder.pop(numbered[i]) for i in range(len(numbered))]
  shapes = [_map_leaves(np.shape, b) for b in blocks]
  if any(s != shapes[0] for s in shapes[1:]):
    raise UserError(f"cannot stack {ENCODER} blocks of different structure or shapes "
                    "into the scanned layout")
  encoder[SCANNED_BLOCK] = _stack(blocks)
  params[ENCODER] = encoder
  return params


def to_layout(params: Mapping, scan: bool) -> dict:
  """`to_scan` or `to_pyloop` as `scan` says."""
  return to_scan(params) if scan else to_pyloop(params)


def for_model(params: Mapping, model: Any) -> dict:
  """`params` in the layout `model` (a FlexiViT) applies: scanned iff `model.scan`.

  Accepts `{"params": tree}` too and returns the same wrapping.
  """
  if set(params) == {"params"} and isinstance(params["params"], Mapping):
    return {"params": for_model(params["params"], model)}
  return to_layout(params, bool(getattr(model, "scan", False)))
