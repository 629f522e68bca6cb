"""What the classification and segmentation evaluators share: one timed pass of a predict
function over one eval split.

Both hold `predict_fn`, `data_cfg`, `pp`, `batch_size`, `name`, `_place` and
`_gflops_fn`; they differ only in what they add up per batch (the `add_batch` each hands
to `OnePassEvaluator.predict_over_split`) and how the sums become metrics.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError

FlexiKey = Tuple[Tuple[str, Any], ...]


def on_default_device(local: Mapping[str, np.ndarray]) -> Dict[str, jax.Array]:
  return {k: jnp.asarray(v) for k, v in local.items()}


class OnePassEvaluator:
  """The pass over the split that the classification and segmentation evaluators share."""

  @staticmethod
  def output_name(cfg: Mapping[str, Any]) -> str:
    """Both score the model's logits, whatever their config."""
    del cfg
    return "logits"

  def eval_data(self):
    """The split's `data.EvalData` (built once per process, then replayed)."""
    from flexivit_jax.data import eval_data  # Here: checking a config needs no TensorFlow.
    return eval_data(self.data_cfg, self.pp, self.batch_size)

  def batch_shapes(self) -> Dict[str, Tuple[int, ...]]:
    """{key: shape} of this process's eval batches, read without running the pipeline."""
    spec = self.eval_data().dataset.element_spec
    return {k: tuple(s.shape) for k, s in spec.items()}

  def predict_over_split(self, params, flexis: Sequence[FlexiKey],
                         add_batch: Callable[[FlexiKey, Any, Mapping], None], *,
                         timing: bool = False,
                         on_batch: Optional[Callable[[FlexiKey, int], None]] = None,
                         check_first_batch: Optional[Callable[[Mapping], None]] = None
                         ) -> Tuple[int, Dict[FlexiKey, float]]:
    """(images seen, {flexi: seconds in predict_fn}) of one pass over the split.

    Each batch (image, labels, mask), placed by `_place`, is predicted at every flexi and
    handed to `add_batch(flexi, logits, batch)`. `check_first_batch(local)` sees the first
    host batch before it is placed. With `timing`, each flexi is compiled and run once on
    the first batch outside the timing. `on_batch(flexi, n)` follows each batch at each
    flexi (progress).
    """
    from flexivit_jax.data import MASK_KEY
    seconds = dict.fromkeys(flexis, 0.0)
    images_seen = 0
    with self.eval_data().iterate() as batches:
      for local in batches:
        if check_first_batch and not images_seen:
          check_first_batch(local)
        batch = self._place({k: local[k] for k in ("image", "labels", MASK_KEY)})
        if timing and not images_seen:
          for f in flexis:  # Compile + one warm-up call, outside the timing.
            jax.block_until_ready(self.predict_fn(params, batch["image"], f))
        for f in flexis:
          start = time.perf_counter()
          logits = self.predict_fn(params, batch["image"], f)
          if timing:
            jax.block_until_ready(logits)
            seconds[f] += time.perf_counter() - start
          add_batch(f, logits, batch)
          if on_batch:
            on_batch(f, len(local[MASK_KEY]))
        images_seen += len(local[MASK_KEY])
    if not images_seen:
      raise UserError(f"{self.name}: the eval split yielded no batches")
    return images_seen, seconds

  def add_speed_and_gflops(self, result: Dict[str, float], flexi: FlexiKey, *, timing: bool,
                           images_seen: int, seconds: Mapping[FlexiKey, float],
                           image_shape: Tuple[int, ...]) -> Dict[str, float]:
    """`result` with img_per_s (when timed) and gflops (when counted) of `flexi`."""
    if timing:
      result["img_per_s"] = images_seen / max(seconds[flexi], 1e-9)
    if self._gflops_fn:
      result["gflops"] = self._gflops_fn(flexi, image_shape)
    return result
