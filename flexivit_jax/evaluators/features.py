"""Features of a whole split at several sizes, gathered on the host: the input of the
few-shot and retrieval evaluators.

A predict function `(params, images, flexi) -> features` (the model's pre-logits or
another named output) runs over one pass of an eval split; padded examples (mask False)
are dropped, and on several processes every process gets every example (an allgather),
so the host-side solvers see the same arrays whatever the device count. `FeatureEvaluator`
is what those two evaluators share.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from flexivit_jax.errors import UserError

FlexiKey = Tuple[Tuple[str, Any], ...]
DEFAULT_REPRESENTATION = "pre_logits"  # big_vision's default few-shot representation_layer.


def _to_host(x) -> np.ndarray:
  """A (possibly global, sharded) array as one numpy array holding every example."""
  if jax.process_count() > 1 and isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def class_ids(batch: Mapping[str, np.ndarray], where: str) -> np.ndarray:
  """Int class per example from `label` (ints) or `labels` (one-hot rows, argmax)."""
  if "label" in batch:
    return np.asarray(batch["label"]).astype(np.int64).reshape(-1)
  if "labels" in batch:
    labels = np.asarray(batch["labels"])
    return labels.astype(np.int64).reshape(-1) if labels.ndim == 1 else labels.argmax(-1)
  raise UserError(f"{where}: the pp must keep 'label' (class ids) or make 'labels' "
                  f"(one-hot); it makes {sorted(batch)}")


def label_key(shapes: Mapping[str, Tuple[int, ...]], where: str) -> str:
  for key in ("label", "labels"):
    if key in shapes:
      return key
  raise UserError(f"{where}: the pp must keep 'label' (class ids) or make 'labels' "
                  f"(one-hot); it makes {sorted(shapes)}")


def on_default_device(local: Mapping[str, np.ndarray]) -> Dict[str, jax.Array]:
  return {k: jax.device_put(v) for k, v in local.items()}


def split_features(predict_fn: Callable, params, flexis: Sequence[FlexiKey], *, data: Mapping,
                   pp: str, batch_size: int, place_batch: Optional[Callable] = None,
                   where: str = "features") -> Tuple[Dict[FlexiKey, np.ndarray], np.ndarray]:
  """({flexi: float32 (N, D) features}, int64 (N,) class ids) of one pass over a split.

  Every flexi value is predicted on each batch as it goes by, so the split is read once.
  """
  from flexivit_jax.data import MASK_KEY, eval_data  # Checking configs needs no TensorFlow.
  source = eval_data(dict(data), pp, batch_size)
  key = label_key({k: s.shape for k, s in source.dataset.element_spec.items()}, where)
  place = place_batch or on_default_device
  chunks = {f: [] for f in flexis}
  labels = []
  with source.iterate() as batches:
    for local in batches:
      batch = place({k: local[k] for k in ("image", key, MASK_KEY)})
      mask = _to_host(batch[MASK_KEY]).astype(bool)
      labels.append(class_ids({key: _to_host(batch[key])}, where)[mask])
      for f in flexis:
        out = _to_host(predict_fn(params, batch["image"], f))
        chunks[f].append(out.reshape(out.shape[0], -1)[mask].astype(np.float32))
  if not labels:
    raise UserError(f"{where}: the split {data.get('name')}:{data.get('split')} yielded no "
                    "examples")
  return {f: np.concatenate(c) for f, c in chunks.items()}, np.concatenate(labels)


class FeatureEvaluator:
  """What the few-shot and retrieval evaluators share: the model output they read (the
  `representation_layer` of their config, default the pre-logits), the features of a
  split through their `predict_fn`, `batch_size` and `_place`, and logging every metric."""

  @staticmethod
  def output_name(cfg: Mapping[str, Any]) -> str:
    return cfg.get("representation_layer") or DEFAULT_REPRESENTATION

  def features_of_split(self, params, flexis: Sequence[FlexiKey], data: Mapping, pp: str
                        ) -> Tuple[Dict[FlexiKey, np.ndarray], np.ndarray]:
    """`split_features` of one split, its errors naming this evaluator and the split."""
    return split_features(
        self.predict_fn, params, flexis, data=data, pp=pp, batch_size=self.batch_size,
        place_batch=self._place, where=f"{self.name} ({data['name']}:{data['split']})")

  def log_values(self, results: Mapping[FlexiKey, Mapping[str, float]]
                 ) -> Dict[Tuple[FlexiKey, str], float]:
    """{(flexi, metric): value} to log: every number of the results."""
    return {(f, m): v for f, r in results.items() for m, v in r.items()}
