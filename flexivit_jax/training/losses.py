"""Classification / segmentation / distillation losses and mixup for the FlexiViT trainer.

Numerics follow big_vision: `sigmoid_xent` sums the per-class binary
cross-entropies (log-sigmoid form, stable for large logits) and averages over
the batch; `softmax_xent` is the usual soft-label cross-entropy; `distill_kl` is
the temperature-scaled KL used for teacher -> student distillation;
`pixel_softmax_xent` the per-pixel cross-entropy of segmentation, averaged over
the pixels whose label is not `ignore_label`;
`classification_sums` the eval metrics (top-1/top-5 hits, xent) over a batch; `mixup`
mixes every given array with its batch-roll using one shared Dirichlet weight.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from flexivit_jax.errors import UserError, did_you_mean
from flexivit_jax.evaluators.segmentation import pixel_labels, pixel_nll
from flexivit_jax.models import vit

LossFn = Callable[..., jax.Array]


def _reduce(per_example: jax.Array, reduction: bool) -> jax.Array:
  """Mean over the batch when `reduction`, else the per-example values."""
  return jnp.mean(per_example) if reduction else per_example


def sigmoid_xent(logits: jax.Array, labels: jax.Array, reduction: bool = True) -> jax.Array:
  """Multi-label BCE: per example sum over classes, batch mean if `reduction`.

  big_vision's default ImageNet loss; uses log_sigmoid(x) and log_sigmoid(-x)
  so it stays finite for logits of any magnitude.
  """
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  nll = -jnp.sum(labels * log_p + (1.0 - labels) * log_not_p, axis=-1)
  return _reduce(nll, reduction)


def softmax_xent(logits: jax.Array, labels: jax.Array, reduction: bool = True) -> jax.Array:
  """Soft-label cross-entropy -sum(labels * log_softmax(logits)), batch mean if `reduction`."""
  nll = -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  return _reduce(nll, reduction)


def pixel_softmax_xent(logits: jax.Array, labels: jax.Array, ignore_label: int) -> jax.Array:
  """Per-pixel softmax cross-entropy, averaged over the pixels not labelled `ignore_label`.

  `logits` (N, H, W, C); `labels` integer class ids (N, H, W) or (N, H, W, 1). The
  mean is over every labelled pixel of the batch (as Segmenter / mmseg), so an image
  with more labelled pixels weighs more; an all-ignored batch gives 0, not NaN.
  """
  labels = pixel_labels(labels)
  valid = labels != ignore_label
  nll = pixel_nll(logits, jnp.where(valid, labels, 0))
  total = jnp.sum(jnp.where(valid, nll, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1)


def distill_kl(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float = 1.0,
  reduction: bool = True,
) -> jax.Array:
  """`t^2 * KL(softmax(teacher/t) || softmax(student/t))`, batch mean if `reduction`.

  The t^2 factor keeps gradient magnitudes comparable across temperatures.
  The teacher is wrapped in stop_gradient: only the student is trained.
  """
  if not temperature or temperature <= 0:
    raise UserError(f"temperature={temperature!r} must be > 0.")
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
  return _reduce(kl * temperature**2, reduction)


def mixup(
  rng: jax.Array,
  *arrays: Optional[jax.Array],
  p: Optional[float],
  fold_in: Optional[Any] = None,
  n: int = 2,
) -> Tuple[Any, ...]:
  """Mixes each array with its batch-roll(s) using ONE shared random weight.

  Weights `w ~ Dirichlet([p] * n)` (for n=2: `a ~ Beta(p, p)`), sorted
  descending so `w[0] = max(a, 1 - a) >= 1/n`; each array becomes
  `sum_i w[i] * roll(x, i, axis=0)`, i.e. for n=2 `a*x + (1-a)*roll(x, 1, 0)`.
  Images, labels and e.g. a teacher's image all get the same weight and roll
  so the mixed labels match the mixed images. `fold_in` (e.g. a host index)
  is folded into the mixing key. `p` must be a static python number; `p` of
  0/None disables mixup (arrays returned unchanged, weights `[1, 0, ...]`).
  `None` entries in `arrays` pass through unchanged.

  Returns `(rng, *mixed_arrays, weights)`, `rng` being a fresh key for later
  use and `weights` the shape-(n,) float32 weights (`weights[0]` is `a`).
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f"mixup n={n!r} must be an int >= 2.")
  if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0):
    raise UserError(f"mixup p={p!r} must be a non-negative number or None.")
  batch_sizes = {x.shape[0] for x in arrays if x is not None}
  if len(batch_sizes) > 1:
    raise ValueError(f"mixup arrays must share the batch size; got {sorted(batch_sizes)}.")
  for x in arrays:
    if x is not None and not jnp.issubdtype(x.dtype, jnp.inexact):
      raise UserError(
        f"mixup needs floating arrays (e.g. one-hot labels), got dtype {x.dtype}."
      )

  rng, rng_mix = jax.random.split(rng)
  if not p:
    weights = jnp.zeros((n,), jnp.float32).at[0].set(1.0)
    return (rng, *arrays, weights)
  if fold_in is not None:
    rng_mix = jax.random.fold_in(rng_mix, fold_in)
  weights = jax.random.dirichlet(rng_mix, jnp.full((n,), float(p), jnp.float32))
  weights = jnp.sort(weights)[::-1]

  def mix(x: Optional[jax.Array]) -> Optional[jax.Array]:
    if x is None:
      return None
    w = weights.astype(x.dtype)
    return sum(w[i] * jnp.roll(x, i, axis=0) for i in range(n))

  return (rng, *(mix(x) for x in arrays), weights)


LOSSES: Dict[str, LossFn] = {
  "sigmoid_xent": sigmoid_xent,
  "softmax_xent": softmax_xent,
}


def get_loss(name: str) -> LossFn:
  """Looks up a classification loss by its config name (`config.loss`)."""
  if not isinstance(name, str) or name not in LOSSES:
    raise UserError(f"unknown config value loss={name!r}{did_you_mean(name, LOSSES)}; "
                    f"allowed: {', '.join(sorted(LOSSES))}")
  return LOSSES[name]


MIXUP_KEYS = ("p", "n", "fold_in")  # big_vision's keys; this trainer takes n=2, fold_in=None.
TEACHER_COMBINE = ("sum", "mean")  # How the KL terms of several teachers add up.
TEACHER_KEYS = ("model", "init", "input_key", "call")  # A distill.teachers.NAME dict.


def check_teachers(teachers: Mapping[str, Any]) -> None:
  """Checks `config.distill.teachers` (what `initial_state.build_teachers` reads)."""
  for name, t in teachers.items():
    if "model" not in t or "init" not in t:
      raise UserError(f"distill.teachers.{name} needs 'model' and 'init' (a checkpoint)")
    vit.from_config(t["model"], f"distill.teachers.{name}.model")
    for key in ("init", "input_key"):
      if key in t and not (isinstance(t[key], str) and t[key]):
        raise UserError(f"config key 'distill.teachers.{name}.{key}' must be a non-empty "
                        f"string, got {t[key]!r}")


def check_segmentation(config: Any) -> None:
  """Segmentation trains the per-pixel softmax cross-entropy: `ignore_label` is an int, and
  the classification-only keys (sigmoid loss, mixup, teachers, head bias) are unset."""
  ignore = config.ignore_label
  if isinstance(ignore, bool) or not isinstance(ignore, int):
    raise UserError(f"config key 'ignore_label' must be an int (the label of unlabelled "
                    f"pixels, e.g. 255), got {ignore!r}")
  if config.task != "segmentation":
    return
  unsupported = {"loss": config.loss != "softmax_xent", "mixup.p": bool(config.mixup.get("p")),
                 "distill.teachers": bool(config.distill.teachers),
                 "init_head_bias": config.init_head_bias is not None}
  bad = [k for k, v in unsupported.items() if v]
  if bad:
    raise UserError(f"task 'segmentation' trains the per-pixel softmax_xent; unset config "
                    f"key(s) {', '.join(bad)} (loss must be 'softmax_xent')")


def check_config(config: Any) -> None:
  """Checks the loss keys of a training config: `loss`, `ignore_label`, `mixup` and `distill`
  (the teachers' models and checkpoints, their temperature and how their terms combine)."""
  get_loss(config.loss)
  check_segmentation(config)
  p = config.mixup.get("p") or 0.0
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < float("inf"):
    raise UserError(f"config key 'mixup.p' must be a finite number >= 0, got {p!r}")
  if config.mixup.get("n", 2) != 2 or config.mixup.get("fold_in") is not None:
    raise UserError(f"mixup n={config.mixup.get('n')}, fold_in={config.mixup.get('fold_in')!r}: "
                    "this trainer mixes n=2 images (a batch with its roll) with a per-step key "
                    "(fold_in=None)")
  t = config.distill.temperature
  if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
    raise UserError(f"config key 'distill.temperature' must be a finite number > 0, got {t!r}")
  if config.distill.combine_teachers not in TEACHER_COMBINE:
    raise UserError(f"distill.combine_teachers={config.distill.combine_teachers!r} is unknown; "
                    f"allowed: {TEACHER_COMBINE}")
  check_teachers(config.distill.teachers)
