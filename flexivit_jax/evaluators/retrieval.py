"""Nearest-neighbour retrieval on the pre-logits, at every size and across sizes.

Queries (a split) and a gallery (another split, or the queries themselves with each
query's own image left out) are embedded by the model's pre-logits; a query's k nearest
gallery images by cosine similarity are a hit when one of them has the query's class.
Recall@k is the fraction of queries with a hit. Embedding the queries at one seqhw and
the gallery at another gives a recall for every (query size, gallery size) pair: it
shows whether one model embeds an image the same way at every patch size.

Results per query flexi value: `recall@K` (gallery at the same size) and
`recall@K_vs_seqhw=S` (gallery at seqhw S); `recall_matrix` reads the table back.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.config_checks import (check_data_and_pp, check_positive_batch_size,
                                                   check_positive_ints)
from flexivit_jax.evaluators.features import FeatureEvaluator
from flexivit_jax.outputs.eval_names import flexi_label

FlexiKey = Tuple[Tuple[str, Any], ...]
DEFAULT_KS = (1, 5)


def _unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def recall_at_k(queries, query_labels, gallery, gallery_labels, ks: Sequence[int] = DEFAULT_KS,
                leave_one_out: bool = False) -> Dict[int, float]:
  """{k: recall@k} of cosine nearest neighbours (ties broken by gallery order).

  `leave_one_out`: the gallery is the query set, and query i never retrieves gallery i.
  """
  sims = _unit_rows(queries) @ _unit_rows(gallery).T
  if leave_one_out:
    np.fill_diagonal(sims, -np.inf)
  order = np.argsort(-sims, axis=1, kind="stable")[:, :max(ks)]
  hits = np.asarray(gallery_labels)[order] == np.asarray(query_labels)[:, None]
  return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def cross_metric(k: int, gallery_flexi: FlexiKey) -> str:
  return f"recall@{k}_vs_{flexi_label(gallery_flexi)}"


def recall_matrix(results: Mapping[FlexiKey, Mapping[str, float]], flexis: Sequence[FlexiKey],
                  k: int = 1) -> np.ndarray:
  """[query flexi i, gallery flexi j] recall@k read from `RetrievalEvaluator.run`'s results."""
  return np.array([[results[q][cross_metric(k, g)] for g in flexis] for q in flexis])


class RetrievalEvaluator(FeatureEvaluator):
  """Recall@k of cosine retrieval at every flexi value and for every pair of them.

  `predict_fn(params, images, flexi) -> features` (the pre-logits, or
  `representation_layer`); `data` the queries, `gallery_data` the gallery (default: the
  queries, leave-one-out); both through `pp`.
  """
  KEYS = ("data", "gallery_data", "pp", "batch_size", "ks", "representation_layer")
  TASK = "classification"  # The models it scores (config.task): FlexiViT features.

  @staticmethod
  def check_config(name: str, cfg: Mapping[str, Any], num_classes: Optional[int]) -> None:
    del num_classes
    check_data_and_pp(name, cfg, data_is=" (the queries)")
    check_positive_ints(list(cfg.get("ks", DEFAULT_KS)), f"{name}.ks")
    check_positive_batch_size(name, cfg.get("batch_size", 1))
    layer = cfg.get("representation_layer")
    if layer is not None and (not isinstance(layer, str) or not layer):
      raise UserError(f"{name}.representation_layer must be a model output name, got {layer!r}")

  def __init__(self, predict_fn: Callable, *, data: Mapping[str, Any], pp: str,
               batch_size: int, gallery_data: Optional[Mapping[str, Any]] = None,
               ks: Sequence[int] = DEFAULT_KS, representation_layer: Optional[str] = None,
               place_batch: Optional[Callable] = None, num_classes: Optional[int] = None,
               name: str = "retrieval"):
    del num_classes
    self.check_config(name, {"data": data, "pp": pp, "ks": ks, "batch_size": batch_size,
                             "representation_layer": representation_layer}, None)
    self.predict_fn, self.name = predict_fn, name
    self.query_data = dict(data)
    self.gallery_data = dict(gallery_data) if gallery_data else None
    self.pp, self.batch_size, self.ks = pp, batch_size, tuple(ks)
    self._place = place_batch

  def run(self, params, flexis: Sequence[FlexiKey]) -> Dict[FlexiKey, Dict[str, float]]:
    """{query flexi: {recall@K, recall@K_vs_<gallery flexi label>}}."""
    queries, query_labels = self.features_of_split(params, flexis, self.query_data, self.pp)
    if self.gallery_data is None:
      gallery, gallery_labels = queries, query_labels
    else:
      gallery, gallery_labels = self.features_of_split(params, flexis, self.gallery_data,
                                                        self.pp)
    results: Dict[FlexiKey, Dict[str, float]] = {f: {} for f in flexis}
    for q in flexis:
      for g in flexis:
        recalls = recall_at_k(queries[q], query_labels, gallery[g], gallery_labels, self.ks,
                              leave_one_out=self.gallery_data is None)
        for k, value in recalls.items():
          results[q][cross_metric(k, g)] = value
          if q == g:
            results[q][f"recall@{k}"] = value
    return results
