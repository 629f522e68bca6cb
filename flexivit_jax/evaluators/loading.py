"""A checkpoint and the model that goes with it, for evaluation outside a training run.

The model comes from a training workdir's config.json, a variant such as 'S/16',
or a JSON dict of FlexiViT fields; the fields the params fix (num_classes,
posemb_size) default to the params' shapes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from flexivit_jax.checkpoints import layout, sources
from flexivit_jax.errors import UserError
from flexivit_jax.models import tasks
from flexivit_jax.models.segmenter import BACKBONE, DECODER
from flexivit_jax.outputs import run_config


def model_from_spec(spec: str) -> dict:
  """FlexiViT fields from a variant ('S/16') or JSON (inline or a .json file)."""
  text = spec
  if spec.endswith(".json"):
    if not os.path.exists(spec):
      raise UserError(f"--model file {spec!r} does not exist")
    with open(spec) as f:
      text = f.read()
  if text.lstrip().startswith("{"):
    try:
      return json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"--model is not valid JSON ({e}): {spec!r}") from None
  return {"variant": spec}


def model_fields(fields: Mapping[str, Any], params: Mapping) -> dict:
  """Config model fields; num_classes and posemb_size default to the params' shapes (a
  Segmenter's: its decoder's outputs and its backbone's posemb)."""
  out = dict(fields)
  if DECODER in params and BACKBONE in params:
    if "num_classes" not in out:
      out["num_classes"] = int(np.shape(params[DECODER]["kernel"])[-1])
    params = params[BACKBONE]
  if "head" in params and "num_classes" not in out:
    out["num_classes"] = int(np.shape(params["head"]["kernel"])[-1])
  if "pos_embedding" in params and "posemb_size" not in out:
    side = int(round(np.sqrt(np.shape(params["pos_embedding"])[1])))
    out["posemb_size"] = (side, side)
  return out


def load_model(checkpoint_path: str, model_spec: Optional[str] = None,
               task: Optional[str] = None
               ) -> Tuple[tasks.Model, Dict[str, Any], Optional[run_config.RunConfig]]:
  """(model, params, workdir config or None) for a checkpoint path/workdir/shortcut.

  `checkpoint_path` is taken as typed (relative, `~`, a shortcut name): resolved once, here.
  `task` (default: the workdir config's, else classification) picks the model.
  """
  path, subkey = sources.split_subkey(checkpoint_path)
  checkpoint_path = sources.resolve_checkpoint(path) + (f":{subkey}" if subkey else "")
  config = run_config.read(checkpoint_path)
  if model_spec:
    fields = model_from_spec(model_spec)
  elif config is not None:
    fields = config.model_fields
  else:
    raise UserError(f"{checkpoint_path!r} is not a workdir with a config.json; pass --model "
                    "(a variant such as 'B/16' or a JSON dict of FlexiViT fields)")
  params = sources.load_params(checkpoint_path)  # Per block; restacked if the model scans.
  task = task or (config.task if config is not None else "classification")
  model = tasks.from_config(model_fields(fields, params), task)
  if tasks.is_segmenter(model) and BACKBONE in params:  # The backbone is the part that scans.
    return model, {**params, BACKBONE: layout.for_model(params[BACKBONE], model.backbone)}, config
  return model, layout.for_model(params, model), config
