"""The segmentation evaluator: mean IoU and pixel accuracy of any predict function.

Per pass over an eval split it accumulates one confusion matrix (true class x
predicted class, over every pixel of every real example whose label is not
`ignore_label`), then reports:

  miou       the mean over classes of intersection / union, taken over the classes
             present (in the labels or the predictions: union > 0); a class absent
             from both is left out rather than counted as 0 or 1
  pixel_acc  the fraction of labelled pixels predicted right
  loss       the per-pixel softmax cross-entropy, averaged over labelled pixels

Padding examples of the last batch (`_mask` False) and pixels labelled
`ignore_label` count nowhere. Labels outside 0..num_classes-1 (other than the
ignore label) are refused when the first batch is checked.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.config_checks import check_data_and_pp, check_positive_batch_size
from flexivit_jax.evaluators.one_pass import OnePassEvaluator, on_default_device

FlexiKey = Tuple[Tuple[str, Any], ...]
PredictFn = Callable[[Any, Any, FlexiKey], jax.Array]  # -> logits (N, H, W, C)
METRICS = ("miou", "pixel_acc", "loss")
DEFAULT_IGNORE_LABEL = 255


def pixel_labels(labels):
  """(N, H, W) int32 class ids from (N, H, W) or (N, H, W, 1) labels."""
  if labels.ndim == 4:
    labels = labels[..., 0]
  return labels.astype(jnp.int32)


def pixel_nll(logits, safe_labels):
  """(N, H, W) float32 -log softmax(logits) at each pixel's class; `safe_labels` (N, H, W)
  int32 ids of classes the logits have (ignored pixels set to any of them by the caller)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_p, safe_labels[..., None], axis=-1)[..., 0]


def segmentation_sums(logits, labels, mask, *, num_classes: int, ignore_label: int):
  """{confusion (C, C) int32 [true, predicted], loss (sum of xent), count}: one batch.

  Counted pixels: the real examples' (`mask`), labelled anything but `ignore_label`.
  """
  labels = pixel_labels(labels)
  valid = (labels != ignore_label) & mask.astype(bool)[:, None, None]
  valid &= (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  pred = jnp.argmax(logits, axis=-1)
  pairs = (safe * num_classes + pred).reshape(-1)
  confusion = jnp.zeros((num_classes * num_classes,), jnp.int32).at[pairs].add(
      valid.reshape(-1).astype(jnp.int32)).reshape(num_classes, num_classes)
  nll = pixel_nll(logits, safe)
  return {"confusion": confusion, "loss": jnp.sum(jnp.where(valid, nll, 0.0)),
          "count": jnp.sum(valid)}


def metrics_from_confusion(confusion: np.ndarray) -> Dict[str, float]:
  """{miou, pixel_acc} of a (C, C) confusion matrix [true, predicted]; NaN if empty."""
  confusion = np.asarray(confusion, np.float64)
  inter = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - inter
  present = union > 0
  total = confusion.sum()
  return {"miou": float(np.mean(inter[present] / union[present])) if present.any() else np.nan,
          "pixel_acc": float(inter.sum() / total) if total else np.nan}


def _check_int(name: str, key: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int):
    raise UserError(f"{name}.{key} must be an int, got {value!r}")


class SegmentationEvaluator(OnePassEvaluator):
  """mIoU, pixel accuracy and loss of a predict function over one pass of an eval split.

  `predict_fn(params, images, flexi) -> logits (N, H, W, num_classes)`: the trainer's
  sharded step or the evaluate CLI's. `place_batch` and `gflops_fn` as the
  classification evaluator's. The pp must make `image` and `labels` (per-pixel
  class ids, (H, W) or (H, W, 1), the image's height and width).
  """
  KEYS = ("data", "pp", "batch_size", "ignore_label")
  TASK = "segmentation"  # The models it scores (config.task).

  @staticmethod
  def check_config(name: str, cfg: Mapping[str, Any], num_classes: Optional[int]) -> None:
    check_data_and_pp(name, cfg)
    batch_size = cfg.get("batch_size")
    if batch_size is not None:
      _check_int(name, "batch_size", batch_size)
      check_positive_batch_size(name, batch_size)
    if "ignore_label" in cfg:
      _check_int(name, "ignore_label", cfg["ignore_label"])
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
      raise UserError(f"{name}: segmentation needs model.num_classes (pixel classes)")

  def __init__(self, predict_fn: PredictFn, *, data: Mapping[str, Any], pp: str,
               batch_size: int, num_classes: int,
               ignore_label: int = DEFAULT_IGNORE_LABEL,
               place_batch: Optional[Callable[[Mapping[str, np.ndarray]], Mapping]] = None,
               gflops_fn: Optional[Callable[[FlexiKey, Tuple[int, ...]], float]] = None,
               name: str = "segmentation"):
    if not num_classes:
      raise UserError(f"{name}: the segmentation evaluator needs num_classes")
    self.predict_fn, self.data_cfg = predict_fn, dict(data)
    self.pp, self.batch_size, self.name = pp, batch_size, name
    self.num_classes, self.ignore_label = int(num_classes), int(ignore_label)
    self._place = place_batch or on_default_device
    self._gflops_fn = gflops_fn
    self.batch_sums = jax.jit(lambda logits, labels, mask: segmentation_sums(
        logits, labels, mask, num_classes=self.num_classes, ignore_label=self.ignore_label))

  def check_batch_shapes(self, shapes: Mapping[str, Tuple[int, ...]]) -> None:
    """The pp must make per-pixel `labels` with the image's height and width."""
    if "labels" not in shapes or "image" not in shapes:
      raise UserError(f"{self.name}: pp {self.pp!r} produces {sorted(shapes)}; segmentation "
                      "needs 'image' and per-pixel 'labels' (e.g. ...|seg_labels())")
    image, labels = shapes["image"], shapes["labels"]
    if len(labels) not in (3, 4) or tuple(labels[1:3]) != tuple(image[1:3]) or (
        len(labels) == 4 and labels[3] != 1):
      raise UserError(f"{self.name}: labels of shape {labels[1:]} are not per-pixel class ids "
                      f"of the {image[1]}x{image[2]} images ((H, W) or (H, W, 1))")

  def check_labels(self, labels: np.ndarray) -> None:
    """Refuses label values outside 0..num_classes-1 other than the ignore label."""
    values = np.unique(np.asarray(labels))
    bad = values[((values < 0) | (values >= self.num_classes)) & (values != self.ignore_label)]
    if bad.size:
      raise UserError(f"{self.name}: the labels hold {int(bad[0])}, outside 0.."
                      f"{self.num_classes - 1} (model.num_classes={self.num_classes}) and not "
                      f"the ignore label {self.ignore_label}")

  def log_values(self, results: Mapping[FlexiKey, Mapping[str, float]]
                 ) -> Dict[Tuple[FlexiKey, str], float]:
    """{(flexi, metric): value} to log: miou (the headline) and pixel_acc."""
    return {(f, m): r[m] for f, r in results.items() for m in ("miou", "pixel_acc")}

  def run(self, params, flexis: Sequence[FlexiKey], *, timing: bool = False,
          on_batch: Optional[Callable[[FlexiKey, int], None]] = None
          ) -> Dict[FlexiKey, Dict[str, float]]:
    """{flexi: {miou, pixel_acc, loss[, img_per_s][, gflops]}} over one pass of the split."""
    from flexivit_jax.data import MASK_KEY
    shapes = self.batch_shapes()
    self.check_batch_shapes(shapes)
    c = self.num_classes
    confusion = {f: np.zeros((c, c), np.int64) for f in flexis}
    loss = dict.fromkeys(flexis, 0.0)
    count = dict.fromkeys(flexis, 0)

    def add_batch(flexi, logits, batch):
      sums = jax.device_get(self.batch_sums(logits, batch["labels"], batch[MASK_KEY]))
      confusion[flexi] += np.asarray(sums["confusion"], np.int64)
      loss[flexi] += float(sums["loss"])
      count[flexi] += int(sums["count"])
    images_seen, seconds = self.predict_over_split(
        params, flexis, add_batch, timing=timing, on_batch=on_batch,
        check_first_batch=lambda local: self.check_labels(local["labels"][local[MASK_KEY]]))
    results = {}
    for f in flexis:
      results[f] = self.add_speed_and_gflops(
          {**metrics_from_confusion(confusion[f]), "loss": loss[f] / max(count[f], 1)}, f,
          timing=timing, images_seen=images_seen, seconds=seconds, image_shape=shapes["image"])
    return results
