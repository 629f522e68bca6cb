"""One model at many sizes: the classification (or segmentation) evaluator over a grid sweep.

The evaluate CLI, the analyses and the notebook evaluate a checkpoint at every
seqhw: a `Predictor` serves the model (kernel and posemb resized once per size),
a `ClassificationEvaluator` runs it over the split, timing the forward pass and
counting its GFLOPs, and each size becomes one row of the eval report.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.evaluators import flops
from flexivit_jax.evaluators.classification import ClassificationEvaluator
from flexivit_jax.evaluators.segmentation import DEFAULT_IGNORE_LABEL, SegmentationEvaluator
from flexivit_jax.evaluators.predict import Predictor, gflops_per_image
from flexivit_jax.models.vit import FlexiViT


def _size_label(patch: Tuple[int, int]) -> Any:
  return patch[0] if patch[0] == patch[1] else list(patch)


def _rows_per_size(evaluator, params: Mapping, seqhws: Sequence[int], metrics: Sequence[str],
                   on_batch: Optional[Callable[[int, int], None]]) -> list[dict]:
  """One timed pass of `evaluator` at every seqhw -> one row per seqhw: seqhw, patch,
  tokens, `metrics`, gflops (None when not counted), img_per_s."""
  flexis = [(("seqhw", s),) for s in seqhws]
  progress = (lambda flexi, n: on_batch(flexi[0][1], n)) if on_batch else None
  results = evaluator.run(params, flexis, timing=True, on_batch=progress)
  image_hw = evaluator.batch_shapes()["image"][1:3]
  return [{"seqhw": s, "patch": _size_label((image_hw[0] // s, image_hw[1] // s)),
           "tokens": s * s, **{k: r[k] for k in metrics},
           "gflops": r.get("gflops"), "img_per_s": r["img_per_s"]}
          for s, r in zip(seqhws, (results[f] for f in flexis))]


def size_evaluator(model: FlexiViT, params: Mapping, *, data: Mapping, pp: str,
                   batch_size: int, label_mapping=None, count_flops: bool = True,
                   name: str = "evaluate") -> Tuple[ClassificationEvaluator, Predictor]:
  """(evaluator, predictor): the evaluator predicts through the predictor; run it with
  the predictor's params."""
  predictor = Predictor(model, params, pp)

  def gflops(flexi, image_shape):
    return gflops_per_image(model, params, tuple(image_shape[1:3]), channels=image_shape[3],
                            **dict(flexi))
  evaluator = ClassificationEvaluator(
      predictor, data=data, pp=pp, batch_size=batch_size, label_mapping=label_mapping,
      num_classes=model.num_classes, gflops_fn=gflops if count_flops else None, name=name)
  return evaluator, predictor


def evaluate_sizes(evaluator: ClassificationEvaluator, params: Mapping, seqhws: Sequence[int],
                   *, on_batch: Optional[Callable[[int, int], None]] = None) -> list[dict]:
  """One pass over the split at every seqhw -> eval rows (outputs.eval_files' columns).

  Rows hold seqhw, patch, tokens, top1, top5, loss, gflops (None when not counted)
  and img_per_s (the forward pass only). `on_batch(seqhw, images)` after each
  batch at each size (progress).
  """
  return _rows_per_size(evaluator, params, seqhws, ("top1", "top5", "loss"), on_batch)


def evaluate_model(model: FlexiViT, params: Mapping, seqhws: Sequence[int], **eval_cfg
                   ) -> list[dict]:
  """`evaluate_sizes` of `model` over `eval_cfg` (size_evaluator's keyword arguments)."""
  evaluator, predictor = size_evaluator(model, params, **eval_cfg)
  return evaluate_sizes(evaluator, predictor.params, seqhws)


# ----------------------------------------------------------------------------
# Segmentation: a Segmenter at many sizes (mIoU, pixel accuracy, GFLOPs per image).


class SegmentationPredictor:
  """A Segmenter's logits at a flexi value, one jitted function per value (the kernel and
  posemb are resized inside it); an evaluator's predict_fn."""

  def __init__(self, model):
    self.model = model
    self._fns: dict = {}

  def fn(self, flexi):
    if flexi not in self._fns:
      model, call = self.model, dict(flexi)
      self._fns[flexi] = jax.jit(lambda p, x: model.apply({"params": p}, x, **call)[0])
    return self._fns[flexi]

  def __call__(self, params, images, flexi):
    return self.fn(flexi)(params, images)

  def gflops(self, params, flexi, image_shape) -> float:
    """GFLOPs per image of one forward pass at `flexi` (XLA's count, upsampling included)."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)),
                          params)
    images = jax.ShapeDtypeStruct((1, *image_shape[1:]), jnp.float32)
    return flops.gflops(self.fn(flexi).lower(shapes, images).compile())


def segmentation_evaluator(model, params: Mapping, *, data: Mapping, pp: str, batch_size: int,
                           ignore_label: int = DEFAULT_IGNORE_LABEL, count_flops: bool = True,
                           name: str = "evaluate") -> SegmentationEvaluator:
  predictor = SegmentationPredictor(model)
  gflops = (lambda flexi, shape: predictor.gflops(params, flexi, shape)) if count_flops else None
  return SegmentationEvaluator(predictor, data=data, pp=pp, batch_size=batch_size,
                               num_classes=model.num_classes, ignore_label=ignore_label,
                               gflops_fn=gflops, name=name)


def evaluate_segmentation_sizes(evaluator: SegmentationEvaluator, params: Mapping,
                                seqhws: Sequence[int], *,
                                on_batch: Optional[Callable[[int, int], None]] = None
                                ) -> list[dict]:
  """One pass at every seqhw -> rows of seqhw, patch, tokens, miou, pixel_acc, loss,
  gflops (None when not counted), img_per_s (the forward pass only)."""
  return _rows_per_size(evaluator, params, seqhws, ("miou", "pixel_acc", "loss"), on_batch)
def feature_evaluator(model: FlexiViT, params: Mapping, name: str, cfg: Mapping[str, Any], *,
                      batch_size: int = 64, data_dir: Optional[str] = None):
  """(evaluator, predictor) of a few-shot or retrieval config (`evals.<name>`'s keys) on one
  model: the predictor serves the output the evaluator reads (pre-logits by default)."""
  from flexivit_jax import evaluators as registry  # The package imports this module.
  cfg = {k: v for k, v in cfg.items() if k not in registry.COMMON_KEYS or k == "type"}
  registry.check_config(name, cfg, model.num_classes)
  cfg = {**cfg, "batch_size": cfg.get("batch_size", batch_size)}
  if data_dir:
    for key in ("data", "gallery_data"):
      if key in cfg:
        cfg[key] = {**cfg[key], "data_dir": cfg[key].get("data_dir", data_dir)}
    if "datasets" in cfg:
      cfg.setdefault("data_dir", data_dir)
  predictor = Predictor(model, params, output=registry.output_name(name, cfg))
  return registry.build(name, cfg, predictor), predictor


def evaluate_features(model: FlexiViT, params: Mapping, name: str, cfg: Mapping[str, Any],
                      seqhws: Sequence[int], **kwargs) -> Dict[int, Dict[str, float]]:
  """{seqhw: that evaluator's numbers} of a few-shot or retrieval config at every seqhw
  (kwargs: batch_size, data_dir as `feature_evaluator`)."""
  evaluator, predictor = feature_evaluator(model, params, name, cfg, **kwargs)
  flexis = [(("seqhw", s),) for s in seqhws]
  results = evaluator.run(predictor.params, flexis)
  return {s: results[f] for s, f in zip(seqhws, flexis)}
