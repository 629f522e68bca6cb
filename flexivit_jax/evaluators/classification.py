"""Classification metrics with big_vision's evaluator semantics, and label maps.

big_vision's `classification` evaluator weighs every example by the max of its
label row (so rows with no label, e.g. ImageNet-ReaL images nobody could
label, drop out of numerator and denominator) and counts a hit as the label
value at the argmax logit. A label map lets a model with more classes (an
i21k model) be scored on a dataset with other classes (ImageNet-1k): entry
`j` of the map is the model class read for dataset class `j`, or -1 where the
model has none (that class is never predicted).
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError

LabelMapping = Union[str, Sequence[int]]


def classification_sums(logits, labels, mask):
  """Sums over real examples: top-1 and top-5 hits, softmax xent, count (weights).

  `mask` marks real (non-padding) examples; an example weighs its label row's
  max (1 for a one-hot row, 0 for an empty row, which so drops out). top-1 is
  the label value at the argmax, as big_vision's evaluator; top-5 the largest
  label value among the five best classes; the loss is the cross-entropy
  against the label row normalised to sum to one.
  """
  weight = mask.astype(jnp.float32) * jnp.max(labels, axis=-1)
  _, topk = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  at_topk = jnp.take_along_axis(labels, topk, axis=-1)
  targets = labels / jnp.maximum(jnp.sum(labels, axis=-1, keepdims=True), 1e-9)
  xent = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
  return {"top1": jnp.sum(at_topk[:, 0] * weight), "top5": jnp.sum(jnp.max(at_topk, -1) * weight),
          "loss": jnp.sum(xent * weight), "count": jnp.sum(weight)}


def classification_counts(logits, labels, mask):
  """(sum of label values at the argmax, sum of weights): big_vision's prec@1 parts."""
  sums = classification_sums(logits, labels, mask)
  return sums["top1"], sums["count"]


def map_logits(logits, mapping):
  """Model-class logits -> dataset-class logits through `mapping` (-1: none)."""
  mapping = jnp.asarray(mapping, jnp.int32)
  picked = jnp.take(logits, jnp.maximum(mapping, 0), axis=-1)
  return jnp.where(mapping >= 0, picked, -jnp.inf)


def _read_mapping_file(path: str) -> list:
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    pass
  try:
    return [int(line.split()[0]) for line in text.splitlines() if line.strip()]
  except ValueError:
    raise UserError(f"label_mapping file {path!r} must hold a JSON list of ints or one "
                    "int per line (the model class of each dataset class)") from None


def load_label_mapping(spec: Optional[LabelMapping], num_model_classes: Optional[int] = None
                       ) -> Optional[np.ndarray]:
  """A label map from a list of ints or a file path (JSON list, or one int per line)."""
  if spec is None:
    return None
  if isinstance(spec, str):
    if not os.path.exists(spec):
      raise UserError(f"label_mapping file {spec!r} does not exist; give a path or a list "
                      "of model class ids, one per dataset class")
    spec = _read_mapping_file(spec)
  values = list(spec) if isinstance(spec, (list, tuple, np.ndarray)) else None
  if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                           for v in values):
    raise UserError(f"label_mapping must be a non-empty list of ints (model class per "
                    f"dataset class, -1 for none), got {str(spec)[:80]!r}")
  out = np.asarray(values, np.int32)
  top = num_model_classes if num_model_classes is not None else np.iinfo(np.int32).max
  bad = out[(out < -1) | (out >= top)]
  if bad.size:
    raise UserError(f"label_mapping holds {int(bad[0])}, outside -1..{top - 1} "
                    f"(the model has {num_model_classes} classes)")
  return out
