"""Few-shot linear probes with big_vision's `fewshot_lsr` semantics, at every patch size.

Features are the model's pre-logits (or another named output, `representation_layer`)
of a train split and a test split. For each seed, `np.random.default_rng(seed)` permutes
each class's train examples (classes in sorted order) and the first `shots` of each are
kept; those features are whitened by their own mean and std (+1e-5), a constant feature
of 100 is appended (an almost unregularised bias), and the targets are `2*onehot-1`. The
ridge regression is solved in closed form through the eigendecomposition of xᵀx (N >= D)
or xxᵀ (N < D), whichever is smaller, in float64 on the host (so any device count gives
the same numbers); the score is the test accuracy of the argmax, averaged over the seeds.

A config as big_vision's (`evals.NAME.type = "fewshot"`):
    datasets = {"digits": ("sklearn_digits", "train", "test")}   # name: (tfds, train, test)
    shots = (1, 5, 10, 25);  l2_reg = 2.0 ** 10;  num_seeds = 3
    pp_train = pp_eval = "decode|resize(48)|value_range(-1, 1)|keep('image', 'label')"
Results per flexi value are `{DATASET}_{SHOTS}shot` accuracies in [0, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.config_checks import check_positive_int, check_positive_ints
from flexivit_jax.evaluators.features import FeatureEvaluator

FlexiKey = Tuple[Tuple[str, Any], ...]
BIAS_FEATURE = 100.0  # The constant appended feature: a bias the l2 penalty hardly touches.
WHITEN_EPS = 1e-5
DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_L2_REG = 2.0 ** 10
DEFAULT_NUM_SEEDS = 3


def metric_name(dataset: str, shots: int) -> str:
  return f"{dataset}_{shots}shot"


# ----------------------------------------------------------------------------
# The solver (numpy, float64).


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
  """The first `shots` of each class's examples under a per-seed permutation."""
  rng = np.random.default_rng(seed)
  picked = []
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    picked.append(rng.permutation(members)[:shots])
  return np.concatenate(picked)


def _prepare(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  x = (np.asarray(x, np.float64) - mean) / std
  return np.concatenate([x, np.full((len(x), 1), BIAS_FEATURE)], axis=1)


def ridge_weights(x: np.ndarray, targets: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_w |xw - t|² + l2 |w|², through the eigendecomposition of the smaller Gram.

  N >= D: xᵀx = V diag(e) Vᵀ and w = V diag(1/(e+l2)) Vᵀ xᵀt; N < D: xxᵀ = U diag(e) Uᵀ and
  w = xᵀ U diag(1/(e+l2)) Uᵀ t (the same w: (xᵀx + l2)⁻¹xᵀ = xᵀ(xxᵀ + l2)⁻¹).
  """
  n, d = x.shape
  if n >= d:
    eigvals, eigvecs = np.linalg.eigh(x.T @ x)
    return eigvecs @ ((eigvecs.T @ (x.T @ targets)) / (eigvals + l2_reg)[:, None])
  eigvals, eigvecs = np.linalg.eigh(x @ x.T)
  return x.T @ (eigvecs @ ((eigvecs.T @ targets) / (eigvals + l2_reg)[:, None]))


def linear_probe_accuracy(train_x, train_y, test_x, test_y, l2_reg: float,
                          num_classes: Optional[int] = None) -> float:
  """Test accuracy of the closed-form ridge probe fit on (train_x, train_y)."""
  num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
  train_x = np.asarray(train_x, np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + WHITEN_EPS
  x = _prepare(train_x, mean, std)
  targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
  weights = ridge_weights(x, targets, l2_reg)
  predictions = (_prepare(test_x, mean, std) @ weights).argmax(-1)
  return float(np.mean(predictions == test_y))


def few_shot_accuracy(train_x, train_y, test_x, test_y, *, shots: int, l2_reg: float,
                      num_seeds: int = DEFAULT_NUM_SEEDS) -> float:
  """The mean over seeds 0..num_seeds-1 of the probe's accuracy with `shots` per class."""
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  accs = []
  for seed in range(num_seeds):
    idx = few_shot_indices(train_y, shots, seed)
    accs.append(linear_probe_accuracy(train_x[idx], train_y[idx], test_x, test_y, l2_reg,
                                      num_classes))
  return float(np.mean(accs))


# ----------------------------------------------------------------------------
# Config.


def _split_configs(spec, where: str) -> Tuple[dict, dict]:
  """(train data cfg, test data cfg) of a datasets entry: (tfds name, train split, test
  split) as big_vision, or {"train": data cfg, "test": data cfg}."""
  if isinstance(spec, (list, tuple)) and len(spec) == 3 and all(isinstance(s, str) for s in spec):
    name, train, test = spec
    return {"name": name, "split": train}, {"name": name, "split": test}
  if hasattr(spec, "get") and set(spec) == {"train", "test"}:
    parts = (dict(spec["train"]), dict(spec["test"]))
    if all(hasattr(p, "get") and "name" in p and "split" in p for p in parts):
      return parts
  raise UserError(f"{where} must be (tfds name, train split, test split) or "
                  f"{{'train': {{name, split}}, 'test': {{name, split}}}}, got {spec!r}")


class FewshotEvaluator(FeatureEvaluator):
  """Few-shot accuracies `{dataset}_{shots}shot` at every flexi value.

  `predict_fn(params, images, flexi) -> features` returns the representation the config
  names (the trainer and the evaluate CLI build it from `output_name`). `place_batch`
  puts a process's batch where predict_fn wants it (see ClassificationEvaluator).
  """
  KEYS = ("datasets", "shots", "l2_reg", "num_seeds", "pp_train", "pp_eval", "batch_size",
          "representation_layer", "data_dir")
  TASK = "classification"  # The models it scores (config.task): FlexiViT features.

  @staticmethod
  def check_config(name: str, cfg: Mapping[str, Any], num_classes: Optional[int]) -> None:
    del num_classes  # Probes have their own classes.
    datasets = cfg.get("datasets")
    if not hasattr(datasets, "items") or not datasets:
      raise UserError(f"{name}.datasets must name at least one dataset: "
                      "{NAME: (tfds name, train split, test split)}")
    for key, spec in datasets.items():
      _split_configs(spec, f"{name}.datasets.{key}")
    for key in ("pp_train", "pp_eval"):
      if not isinstance(cfg.get(key), str) or not cfg.get(key):
        raise UserError(f"{name} needs '{key}' (a pp string keeping 'image' and 'label')")
    check_positive_ints(list(cfg.get("shots", DEFAULT_SHOTS)), f"{name}.shots")
    check_positive_int(cfg.get("num_seeds", DEFAULT_NUM_SEEDS), f"{name}.num_seeds")
    check_positive_int(cfg.get("batch_size", 1), f"{name}.batch_size")
    l2 = cfg.get("l2_reg", DEFAULT_L2_REG)
    if not isinstance(l2, (int, float)) or isinstance(l2, bool) or l2 < 0:
      raise UserError(f"{name}.l2_reg must be a number >= 0, got {l2!r}")
    layer = cfg.get("representation_layer")
    if layer is not None and (not isinstance(layer, str) or not layer):
      raise UserError(f"{name}.representation_layer must be a model output name such as "
                      f"'pre_logits', got {layer!r}")

  def __init__(self, predict_fn: Callable, *, datasets: Mapping[str, Any], pp_train: str,
               pp_eval: str, batch_size: int, shots: Sequence[int] = DEFAULT_SHOTS,
               l2_reg: float = DEFAULT_L2_REG, num_seeds: int = DEFAULT_NUM_SEEDS,
               representation_layer: Optional[str] = None, data_dir: Optional[str] = None,
               place_batch: Optional[Callable] = None, num_classes: Optional[int] = None,
               name: str = "fewshot"):
    del num_classes  # The probes count the classes of their own datasets.
    cfg = {"datasets": datasets, "pp_train": pp_train, "pp_eval": pp_eval, "shots": shots,
           "l2_reg": l2_reg, "num_seeds": num_seeds, "batch_size": batch_size,
           "representation_layer": representation_layer}
    self.check_config(name, cfg, None)
    self.predict_fn, self.name = predict_fn, name
    self.splits = {}
    for key, spec in datasets.items():
      train, test = _split_configs(spec, f"{name}.datasets.{key}")
      if data_dir:
        train.setdefault("data_dir", data_dir)
        test.setdefault("data_dir", data_dir)
      self.splits[key] = (train, test)
    self.pp_train, self.pp_eval, self.batch_size = pp_train, pp_eval, batch_size
    self.shots, self.l2_reg, self.num_seeds = tuple(shots), float(l2_reg), int(num_seeds)
    self.representation = self.output_name(cfg)
    self._place = place_batch

  def run(self, params, flexis: Sequence[FlexiKey]) -> Dict[FlexiKey, Dict[str, float]]:
    """{flexi: {"{dataset}_{shots}shot": accuracy}}: one pass over each split, then the
    probes on the host."""
    results: Dict[FlexiKey, Dict[str, float]] = {f: {} for f in flexis}
    for key, (train, test) in self.splits.items():
      train_x, train_y = self.features_of_split(params, flexis, train, self.pp_train)
      test_x, test_y = self.features_of_split(params, flexis, test, self.pp_eval)
      for f in flexis:
        for shots in self.shots:
          results[f][metric_name(key, shots)] = few_shot_accuracy(
              train_x[f], train_y, test_x[f], test_y, shots=shots, l2_reg=self.l2_reg,
              num_seeds=self.num_seeds)
    return results
