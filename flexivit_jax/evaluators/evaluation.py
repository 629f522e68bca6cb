"""Evaluation outside a training run: one model at many sizes, with cost and speed.

The per-batch metrics (`classification.classification_sums`) are the ones the trainer's
eval step uses; `evaluate_sizes` runs a `Predictor` over one pass of
an eval split at every grid, timing each size and counting its FLOPs.
`load_model` reads a checkpoint and the model that goes with it (a workdir's
config.json, a variant such as 'S/16', or a JSON dict of FlexiViT fields).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax import data
from flexivit_jax.checkpoints import npz
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import classification
from flexivit_jax.evaluators.predict import Predictor, gflops_per_image
from flexivit_jax.models import vit
from flexivit_jax.models.vit import FlexiViT

_sums = jax.jit(classification.classification_sums)


def _size_label(patch: Tuple[int, int]) -> Any:
  return patch[0] if patch[0] == patch[1] else list(patch)


def evaluate_sizes(predictor: Predictor, batches, seqhws: Sequence[int], *,
                   on_batch: Optional[Callable[[int, int], None]] = None,
                   count_flops: bool = True) -> list[dict]:
  """One pass over `batches` ({image, labels, _mask}) at every seqhw -> eval rows.

  Rows hold seqhw, patch, tokens, top1, top5, loss, gflops, img_per_s. The
  throughput counts only the forward pass (resize and compile happen before).
  `on_batch(seqhw, images)` is called after each batch at each size (progress).
  """
  totals = {s: {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0} for s in seqhws}
  seconds = dict.fromkeys(seqhws, 0.0)
  images_seen = dict.fromkeys(seqhws, 0)
  image_hw = None
  for batch in batches:
    images = jnp.asarray(batch["image"], jnp.float32)
    if image_hw is None:
      image_hw = images.shape[1:3]
      for s in seqhws:  # Resize + compile + one warm-up call, outside the timing.
        jax.block_until_ready(predictor.predict(images, seqhw=s))
    for s in seqhws:
      start = time.perf_counter()
      logits = jax.block_until_ready(predictor.predict(images, seqhw=s))
      seconds[s] += time.perf_counter() - start
      images_seen[s] += images.shape[0]
      for key, value in _sums(logits, jnp.asarray(batch["labels"]),
                              jnp.asarray(batch["_mask"])).items():
        totals[s][key] += float(value)
      if on_batch:
        on_batch(s, images.shape[0])
  if image_hw is None:
    raise UserError("the eval split yielded no batches")
  rows = []
  for s in seqhws:
    t = totals[s]
    n = max(t["count"], 1.0)
    patch = (image_hw[0] // s, image_hw[1] // s)
    gflops = (gflops_per_image(predictor.model, predictor.params, tuple(image_hw), seqhw=s,
                               channels=int(images.shape[-1])) if count_flops else None)
    rows.append({"seqhw": s, "patch": _size_label(patch), "tokens": s * s,
                 "top1": t["top1"] / n, "top5": t["top5"] / n, "loss": t["loss"] / n,
                 "gflops": gflops, "img_per_s": images_seen[s] / max(seconds[s], 1e-9)})
  return rows


def evaluate_model(model: FlexiViT, params: Mapping, data_cfg: Mapping, pp: str,
                   batch_size: int, seqhws: Sequence[int], **kwargs) -> list[dict]:
  """`evaluate_sizes` over an eval split of the input pipeline."""
  batches = data.eval_iterator(data_cfg, pp, batch_size)
  try:
    return evaluate_sizes(Predictor(model, params, pp), batches, seqhws, **kwargs)
  finally:
    close = getattr(batches, "close", None)
    if close:
      close()


def read_workdir_config(path: str) -> Optional[dict]:
  """The config.json of a training workdir, or None when `path` is not one."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isdir(path) or not os.path.exists(cfg):
    return None
  with open(cfg) as f:
    return json.load(f)


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
  """Config model fields; num_classes and posemb_size default to the params' shapes."""
  out = dict(fields)
  if "head" in params and "num_classes" not in out:
    out["num_classes"] = int(np.shape(params["head"]["kernel"])[-1])
  if "pos_embedding" in params and "posemb_size" not in out:
    side = int(round(np.sqrt(np.shape(params["pos_embedding"])[1])))
    out["posemb_size"] = (side, side)
  return out


def load_model(checkpoint_path: str, model_spec: Optional[str] = None
               ) -> Tuple[FlexiViT, Dict[str, Any], Optional[dict]]:
  """(model, params, workdir config or None) for a checkpoint path/workdir/shortcut.

  `checkpoint_path` is taken as typed (relative, `~`, a shortcut name): resolved once, here.
  """
  path, subkey = npz.split_subkey(checkpoint_path)
  checkpoint_path = npz.resolve_checkpoint(path) + (f":{subkey}" if subkey else "")
  config = read_workdir_config(checkpoint_path)
  if model_spec:
    fields = model_from_spec(model_spec)
  elif config is not None:
    fields = config.get("model", {})
  else:
    raise UserError(f"{checkpoint_path!r} is not a workdir with a config.json; pass --model "
                     "(a variant such as 'B/16' or a JSON dict of FlexiViT fields)")
  params = npz.load_params(checkpoint_path)
  try:
    model = vit.from_config(model_fields(fields, params))
  except TypeError as e:  # An unknown FlexiViT field.
    raise UserError(f"bad model fields {sorted(fields)}: {e}") from None
  return model, params, config
