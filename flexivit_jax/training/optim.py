"""Learning-rate schedules and the optax optimizer chain of the FlexiViT trainer.

Matches big_vision's numerics: the schedule is a *multiplier* in [0, 1] (the base
learning rate lives in the optimizer config), and the optimizer is the chain

  clip_by_global_norm -> scale_by_adam (bf16 first moment) -> scale(lr)
  -> add_decayed_weights(wd, kernels only) -> scale_by_schedule -> scale(-1)

so one update is ``-sched(step) * (lr * adam_update + wd * param)`` for kernels
(``param`` only for kernels; biases, norms, embeddings are not decayed). Weight
decay is decoupled: it is multiplied by the schedule but NOT by ``lr``.

Note that ``optax.scale_by_schedule`` evaluates the schedule at the count of
updates already applied, so the first update uses ``sched(0)`` (zero when there
is a warmup), exactly as in big_vision.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flexivit_jax import tree
from flexivit_jax.errors import UserError

ScheduleFn = Callable[[Any], jax.Array]

DECAY_TYPES = ("stair", "cosine", "linear", "rsqrt", "constant", None)
SCHEDULE_KEYS = (
  "decay_type",
  "warmup_steps",
  "warmup_percent",
  "cooldown_steps",
  "cooldown_percent",
  "min_lr",
  "linear_end",
  "timescale",
  "steps",
  "mults",
)
# big_vision features this port deliberately does not implement; rejected
# loudly rather than silently ignored.
UNSUPPORTED_OPTIM_KEYS = ("wd_mults", "lr_mults", "frozen_params")


def _resolve_steps(
  name: str, steps: Optional[int], percent: Optional[float], total_steps: int
) -> int:
  """Turns `<name>_steps` / `<name>_percent` into a step count in [0, total_steps]."""
  if percent is not None:
    if steps:
      raise UserError(
        f"Give only one of {name}_steps={steps!r} and {name}_percent={percent!r}."
      )
    if not 0.0 <= percent <= 1.0:
      raise UserError(f"{name}_percent={percent!r} must be in [0, 1].")
    steps = int(round(percent * total_steps))
  steps = 0 if steps is None else steps
  if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= total_steps:
    raise UserError(
      f"{name}_steps={steps!r} must be an int in [0, total_steps={total_steps}]."
    )
  return steps


def _stairs(steps, mults):
  """'stair' boundaries and multipliers ([1.0] + mults), checked."""
  steps, mults = (() if steps is None else steps), (() if mults is None else mults)
  for name, seq in (("steps", steps), ("mults", mults)):
    if not isinstance(seq, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in seq):
      raise UserError(f"schedule {name}={seq!r} must be a list of numbers")
  steps, mults = list(steps), list(mults)
  if len(steps) != len(mults):
    raise UserError(f"schedule steps={steps!r} and mults={mults!r} must have equal lengths")
  if steps != sorted(steps):
    raise UserError(f"schedule steps={steps!r} must be increasing")
  # numpy, not jnp: building a schedule (config validation) must not start a JAX backend.
  return (np.asarray(steps, np.float32).reshape(-1), np.asarray([1.0] + mults, np.float32))


def make_schedule(
  total_steps: int,
  *,
  decay_type: Optional[str] = "stair",
  warmup_steps: int = 0,
  warmup_percent: Optional[float] = None,
  cooldown_steps: int = 0,
  cooldown_percent: Optional[float] = None,
  min_lr: float = 0.0,
  linear_end: float = 0.0,
  timescale: int = 10_000,
  steps: Sequence[int] = (),
  mults: Sequence[float] = (),
) -> ScheduleFn:
  """Builds the lr multiplier `step -> [0, 1]` used for training and logging.

  Linear warmup `step / warmup_steps` from 0 to 1, then with
  `progress = clip((step - warmup) / (total - warmup), 0, 1)`:
   * 'cosine': `min_lr + (1 - min_lr) * 0.5 * (1 + cos(pi * progress))`
    (ends at `min_lr`, 0 by default; `min_lr` is a fraction of the base lr);
   * 'linear': from 1 down to `linear_end` at `total_steps`;
   * 'rsqrt': `1 / sqrt((step - warmup + timescale) / timescale)` after
    warmup (big_vision's form: 1 at the end of warmup, 1/2 at
    `warmup + 3 * timescale`);
   * 'stair' (the default, as big_vision's): 1, then `mults[i]` from step
    `steps[i]` on; with no steps (the default) 1 after warmup;
   * 'constant' / None: 1 after warmup.
  An optional linear cooldown (to 0 at `total_steps`) multiplies the result.
  The returned function accepts python ints or (traced) jax integers and
  returns a float32 scalar.
  """
  if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
    raise UserError(f"total_steps={total_steps!r} must be a positive int.")
  if decay_type not in DECAY_TYPES:
    raise UserError(
      f"Unknown schedule decay_type={decay_type!r}; allowed: {list(DECAY_TYPES)}."
    )
  warmup = _resolve_steps("warmup", warmup_steps, warmup_percent, total_steps)
  cooldown = _resolve_steps("cooldown", cooldown_steps, cooldown_percent, total_steps)
  if not 0.0 <= min_lr <= 1.0:
    raise UserError(f"min_lr={min_lr!r} must be in [0, 1] (a fraction of the base lr).")
  if not 0.0 <= linear_end <= 1.0:
    raise UserError(f"linear_end={linear_end!r} must be in [0, 1] (a fraction of the base lr).")
  if not timescale or timescale <= 0:
    raise UserError(f"timescale={timescale!r} must be positive.")
  decay_span = float(max(total_steps - warmup, 1))
  stair_steps, stair_mults = _stairs(steps, mults)

  def schedule(step: Any) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / decay_span, 0.0, 1.0)
    if decay_type == "cosine":
      mult = min_lr + (1.0 - min_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif decay_type == "linear":
      mult = linear_end + (1.0 - linear_end) * (1.0 - progress)
    elif decay_type == "rsqrt":
      after = jnp.maximum(step - warmup, 0.0)
      mult = 1.0 / jnp.sqrt((after + timescale) / timescale)
    elif decay_type == "stair":
      i = jnp.searchsorted(stair_steps, step + 1)
      mult = jnp.take(stair_mults, i)
    else:  # constant / None
      mult = jnp.ones_like(step)
    if warmup:
      mult = mult * jnp.clip(step / warmup, 0.0, 1.0)
    if cooldown:
      mult = mult * jnp.clip((total_steps - step) / cooldown, 0.0, 1.0)
    return jnp.asarray(mult, jnp.float32)

  return schedule


def schedule_from_config(
  schedule_config: Optional[Mapping[str, Any]], total_steps: int
) -> ScheduleFn:
  """Builds the multiplier from big_vision's `config.schedule` dict (None: constant 1)."""
  if schedule_config is None:
    return make_schedule(total_steps, decay_type="constant")
  if not hasattr(schedule_config, "keys"):
    raise UserError(
      f"schedule={schedule_config!r} must be a dict such as "
      "dict(decay_type='cosine', warmup_steps=5000); per-parameter schedule "
      "lists are not supported."
    )
  kwargs = dict(schedule_config)
  unknown = sorted(set(kwargs) - set(SCHEDULE_KEYS))
  if unknown:
    raise UserError(f"Unknown schedule keys {unknown}; allowed: {list(SCHEDULE_KEYS)}.")
  for key in ("min_lr", "linear_end", "timescale", "warmup_percent", "cooldown_percent"):
    value = kwargs.get(key, 0)
    optional = key.endswith("_percent") and value is None
    if not optional and (isinstance(value, bool) or not isinstance(value, (int, float))):
      raise UserError(f"schedule {key}={value!r} must be a number")
  return make_schedule(total_steps, **kwargs)


def kernel_mask(params: Any) -> Any:
  """True for leaves whose path ends in 'kernel': the only weight-decayed params."""
  return jax.tree.map_with_path(
    lambda path, _: tree.key_name(path[-1]) == "kernel", params
  )


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
  """Reads `key` from a dict or ml_collections.ConfigDict."""
  getter = getattr(config, "get", None)
  if getter is None:
    raise UserError(f"Optimizer config must be a dict or ConfigDict, got {type(config)!r}.")
  return getter(key, default)


def momentum_hp(momentum: float = 0.9, dtype: Any = jnp.bfloat16,
                nesterov: bool = False) -> optax.GradientTransformation:
  """SGD momentum with the accumulator in `dtype` (big_vision's transfer optimizer)."""
  return optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=dtype)


# Optimizers named as in big_vision's configs that optax does not provide.
OWN_OPTIMIZERS = {"big_vision.momentum_hp": momentum_hp}


def _optax_fn(name: Any) -> Optional[Callable[..., optax.GradientTransformation]]:
  """The optimizer `config.optax_name` names, or None if it names none this port allows."""
  if not isinstance(name, str):
    return None
  fn = OWN_OPTIMIZERS.get(name) or getattr(optax, name, None)
  return fn if callable(fn) and (name.startswith("scale_by_") or name in OWN_OPTIMIZERS) else None


def _non_negative(config: Any, key: str) -> None:
  value = _cfg_get(config, key)
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  if not (ok and math.isfinite(value) and value >= 0):
    raise UserError(f"config key {key!r} must be a finite number >= 0, got {value!r}")


def check_config(config: Any, total_steps: Optional[int] = None) -> None:
  """Checks the optimizer keys `make_optimizer` reads (lr, wd, grad_clip_norm, optax_name,
  optax; the schedule too when `total_steps` is known) without building anything."""
  for key in UNSUPPORTED_OPTIM_KEYS:
    if _cfg_get(config, key) is not None:
      raise UserError(f"config.{key} is not supported by this port; remove it.")
  _non_negative(config, "lr")
  if _cfg_get(config, "wd") is not None:
    _non_negative(config, "wd")
  clip = _cfg_get(config, "grad_clip_norm")
  bad_clip = isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0
  if clip is not None and bad_clip:
    raise UserError(f"config.grad_clip_norm={clip!r} must be a positive number or None.")
  optax_name = _cfg_get(config, "optax_name", "scale_by_adam")
  if _optax_fn(optax_name) is None:
    raise UserError(
      f"config.optax_name={optax_name!r} must name an optax 'scale_by_*' "
      f"transformation, e.g. 'scale_by_adam', or one of {sorted(OWN_OPTIMIZERS)}."
    )
  kwargs = _cfg_get(config, "optax")
  if kwargs is not None and not hasattr(kwargs, "keys"):
    raise UserError(f"config.optax={kwargs!r} must be a dict of keyword arguments of "
                    f"optax.{optax_name}")
  if total_steps is not None:
    schedule_from_config(_cfg_get(config, "schedule"), total_steps)
  if _cfg_get(config, "input") is not None:
    check_accum_steps(_cfg_get(config, "grad_accum_steps", 1), config.input.batch_size)


def check_accum_steps(accum_steps: Any, batch_size: int, devices: int = 1,
                      what: str = "grad_accum_steps") -> None:
  """Each device splits its share of the batch into `accum_steps` equal microbatches."""
  if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps <= 0:
    raise UserError(f"config key {what!r} must be a positive int, got {accum_steps!r}")
  per_device = batch_size // devices if batch_size % devices == 0 else None
  if per_device is None or per_device % accum_steps:
    raise UserError(f"config key {what!r}={accum_steps} must divide the per-device batch "
                    f"(input.batch_size={batch_size} over {devices} device"
                    f"{'s' * (devices != 1)}); allowed: "
                    + ", ".join(map(str, _divisors(per_device or batch_size))))


def _divisors(n: int) -> list:
  return [d for d in range(1, n + 1) if n % d == 0]


def make_optimizer(
  config: Any, total_steps: int
) -> Tuple[optax.GradientTransformation, ScheduleFn]:
  """Builds big_vision's optimizer chain from the trainer config.

  Reads `lr` (required), `wd` (default 0), `schedule` (dict, see
  `schedule_from_config`), `grad_clip_norm` (None disables clipping),
  `optax_name` (default 'scale_by_adam') and `optax` (kwargs of that optax
  function, e.g. `dict(mu_dtype='bfloat16', b2=0.95)`). Returns `(tx, sched_fn)`
  where `sched_fn` is the lr multiplier, so the trainer can log
  `config.lr * sched_fn(step)` (`make_lr_fn(config.lr, sched_fn)`).
  """
  check_config(config)
  lr, wd = _cfg_get(config, "lr"), _cfg_get(config, "wd") or 0.0
  clip = _cfg_get(config, "grad_clip_norm")
  optax_name = _cfg_get(config, "optax_name", "scale_by_adam")
  optax_fn = _optax_fn(optax_name)
  optax_kwargs = dict(_cfg_get(config, "optax", None) or {})
  for key in ("mu_dtype", "dtype"):
    if isinstance(optax_kwargs.get(key), str):
      optax_kwargs[key] = jnp.dtype(optax_kwargs[key])
  sched_fn = schedule_from_config(_cfg_get(config, "schedule"), total_steps)

  parts = []
  if clip is not None:
    parts.append(optax.clip_by_global_norm(float(clip)))
  try:
    parts.append(optax_fn(**optax_kwargs))
  except TypeError as e:
    raise UserError(f"Bad config.optax={optax_kwargs!r} for optax.{optax_name}: {e}") from e
  parts += [
    optax.scale(float(lr)),
    optax.add_decayed_weights(float(wd), mask=kernel_mask),
    optax.scale_by_schedule(sched_fn),
    optax.scale(-1.0),
  ]
  return optax.chain(*parts), sched_fn


def make_lr_fn(lr: float, sched_fn: ScheduleFn) -> Callable[[Any], float]:
  """Effective learning rate `lr * sched_fn(step)` (the schedule `make_optimizer` returned)."""
  return lambda step: float(lr) * float(sched_fn(step))
