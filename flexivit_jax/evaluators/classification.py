"""The classification evaluator: big_vision's semantics, label maps, any predict function.

big_vision's `classification` evaluator weighs every example by the max of its
label row (so rows with no label, e.g. ImageNet-ReaL images nobody could
label, drop out of numerator and denominator) and counts a hit as the label
value at the argmax logit. A label map lets a model with more classes (an
i21k model) be scored on a dataset with other classes (ImageNet-1k): entry
`j` of the map is the model class read for dataset class `j`, or -1 where the
model has none (that class is never predicted).

`ClassificationEvaluator(predict_fn, data=..., pp=..., batch_size=...)` runs one
pass over an eval split per `run(params, flexis)`: the trainer (sharded over its
mesh), the evaluate CLI and the analyses (through `sweep`) all run it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.config_checks import check_data_and_pp, check_positive_batch_size
from flexivit_jax.evaluators.one_pass import OnePassEvaluator, on_default_device

LabelMapping = Union[str, Sequence[int]]
FlexiKey = Tuple[Tuple[str, Any], ...]  # (("seqhw", 8),): the model's call arguments.
# predict_fn(params, images, flexi) -> logits (N, num_model_classes).
PredictFn = Callable[[Any, Any, FlexiKey], jax.Array]
METRICS = ("top1", "top5", "loss")


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


class ClassificationEvaluator(OnePassEvaluator):
  """top-1, top-5 and loss of a predict function over one pass of an eval split.

  `predict_fn(params, images, flexi) -> logits` is the model as the caller runs
  it: the trainer's sharded step, or a `Predictor` (kernels resized once per size).
  `place_batch(local) -> batch` puts each process's batch where `predict_fn`
  wants it (the trainer pads it to its local devices and builds global arrays on
  its mesh; default: this process's default device); every process must run.
  `gflops_fn(flexi, image_shape) -> GFLOPs per image` adds a `gflops` result.
  `name` prefixes its errors (the config key, or the CLI flag the data came from).
  """
  KEYS = ("data", "pp", "batch_size", "label_mapping")  # Its config keys (see __init__).
  TASK = "classification"  # The models it scores (config.task).

  @staticmethod
  def check_config(name: str, cfg: Mapping[str, Any], num_classes: Optional[int]) -> None:
    """The keys of `evals.<name>` this evaluator reads; no data, no devices."""
    check_data_and_pp(name, cfg)
    if cfg.get("batch_size") is not None:
      check_positive_batch_size(name, cfg["batch_size"])
    load_label_mapping(cfg.get("label_mapping"), num_classes)

  def __init__(self, predict_fn: PredictFn, *, data: Mapping[str, Any], pp: str,
               batch_size: int, label_mapping: Optional[LabelMapping] = None,
               num_classes: Optional[int] = None,
               place_batch: Optional[Callable[[Mapping[str, np.ndarray]], Mapping]] = None,
               gflops_fn: Optional[Callable[[FlexiKey, Tuple[int, ...]], float]] = None,
               name: str = "classification"):
    self.predict_fn, self.data_cfg = predict_fn, dict(data)
    self.pp, self.batch_size = pp, batch_size
    self.name, self.num_classes = name, num_classes
    self.label_mapping = load_label_mapping(label_mapping, num_classes)
    self._place = place_batch or on_default_device
    self._gflops_fn = gflops_fn
    mapping = self.label_mapping  # A constant of the jitted sums.
    # The sums of one batch (classification_sums, after the label map), jitted.
    self.batch_sums = jax.jit(lambda logits, labels, mask: classification_sums(
        logits if mapping is None else map_logits(logits, mapping), labels, mask))

  def check_batch_shapes(self, shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """The pp must make labels, with one class per entry of the label map (if any)."""
    if "labels" not in shapes:
      raise UserError(f"{self.name}: pp {self.pp!r} produces {sorted(shapes)}, no 'labels' "
                      "to score against")
    classes = shapes["labels"][-1]
    if self.label_mapping is not None and classes != len(self.label_mapping):
      raise UserError(f"{self.name}: label_mapping has {len(self.label_mapping)} entries "
                      f"but its pp makes labels with {classes} classes")
    if self.label_mapping is None and self.num_classes and classes != self.num_classes:
      raise UserError(f"{self.name}: the model has {self.num_classes} classes but its pp "
                      f"makes labels with {classes}; make them equal or give a label_mapping")

  def log_values(self, results: Mapping[FlexiKey, Mapping[str, float]]
                 ) -> Dict[Tuple[FlexiKey, str], float]:
    """{(flexi, metric): value} to log: top-1 as prec@1, as big_vision's trainer."""
    return {(f, "prec@1"): r["top1"] for f, r in results.items()}

  def run(self, params, flexis: Sequence[FlexiKey], *, timing: bool = False,
          on_batch: Optional[Callable[[FlexiKey, int], None]] = None
          ) -> Dict[FlexiKey, Dict[str, float]]:
    """{flexi: {top1, top5, loss[, img_per_s][, gflops]}} over one pass of the split.

    With `timing`, img_per_s counts only `predict_fn` (each flexi is compiled and
    run once on the first batch, outside the timing). `on_batch(flexi, n)` is
    called after each batch at each flexi (progress).
    """
    from flexivit_jax.data import MASK_KEY  # Here: checking a config needs no TensorFlow.
    shapes = self.batch_shapes()
    self.check_batch_shapes(shapes)
    totals = {f: dict.fromkeys(("top1", "top5", "loss", "count"), 0.0) for f in flexis}

    def add_batch(flexi, logits, batch):
      for key, value in self.batch_sums(logits, batch["labels"], batch[MASK_KEY]).items():
        totals[flexi][key] += float(value)
    images_seen, seconds = self.predict_over_split(params, flexis, add_batch, timing=timing,
                                                   on_batch=on_batch)
    results = {}
    for f in flexis:
      count = max(totals[f]["count"], 1.0)
      results[f] = self.add_speed_and_gflops(
          {m: totals[f][m] / count for m in METRICS}, f, timing=timing,
          images_seen=images_seen, seconds=seconds, image_shape=shapes["image"])
    return results
