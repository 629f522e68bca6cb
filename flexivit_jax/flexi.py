"""Per-step sampling of FlexiViT's flexible model-call arguments.

FlexiViT trains one model at many sequence lengths / patch sizes: each step
draws, e.g., `seqhw` (the patch-grid side) from a list of values. Config form
(as in big_vision)::

  config.flexi = dict(
    seqhw=dict(v=(5, 6, 8, 10, 12, 15, 16, 20, 24, 30), p='uniform'),
    patch_size=dict(v=((8, 8), (16, 16)), p=(0.3, 0.7)),
  )

Every key names a model-call argument. The draw is a pure function of
`(seed, step, argument name)` (`seed` may be a tuple such as
(experiment id, work-unit id)), so all hosts pick the same value without any
communication and a resumed run replays exactly the same sequence. Values come
back as hashable python objects (ints, tuples) so they can be static jit
arguments; `all_values()` lists every combination for ahead-of-time
compilation and for evaluating at every setting.

Step is passed to every query (`__call__`, `probabilities`) so a curriculum
(values/probabilities depending on training progress) can be added later
without changing callers; today `v` and `p` are constant over training.
"""

from __future__ import annotations

import itertools
import numbers
import operator
import zlib
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from flexivit_jax.errors import UserError

SPEC_KEYS = ("v", "p")
# Fixed salt so the flexi draws are decorrelated from any other numpy stream
# seeded with (seed, step) elsewhere in the trainer.
_SALT = 0xF1E71


def _to_hashable(value: Any) -> Hashable:
  """Converts lists/arrays/numpy scalars into nested tuples of python scalars."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return tuple(_to_hashable(v) for v in value)
  try:
    hash(value)
  except TypeError as e:
    raise UserError(f"Flexi value {value!r} is not hashable (use ints or tuples).") from e
  return value


def _parse_probs(name: str, p: Any, num_values: int) -> np.ndarray:
  """Validates `p` ('uniform' or weights) and returns normalised probabilities."""
  if p is None or (isinstance(p, str) and p == "uniform"):
    return np.full(num_values, 1.0 / num_values)
  if isinstance(p, str):
    raise UserError(f"flexi.{name}.p={p!r}: allowed are 'uniform' or a sequence of weights.")
  try:
    probs = np.asarray(p, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise UserError(f"flexi.{name}.p={p!r} must be 'uniform' or a sequence of numbers.") from e
  if probs.ndim != 1 or probs.shape[0] != num_values:
    raise UserError(
      f"flexi.{name}.p={p!r} must have one weight per value ({num_values} values)."
    )
  if not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
    raise UserError(
      f"flexi.{name}.p={p!r} must be finite, non-negative and sum to > 0."
    )
  return probs / probs.sum()


def _parse_seed(seed: Any) -> Tuple[int, ...]:
  """Normalises an int or a sequence of ints (all >= 0) into a tuple."""
  parts = seed if isinstance(seed, (tuple, list)) else (seed,)
  ok = len(parts) > 0 and all(
      isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 0 for x in parts)
  if not ok:
    raise UserError(
        f"FlexiSampler seed={seed!r} must be a non-negative int or a non-empty "
        "tuple of them, e.g. (experiment_id, work_unit_id).")
  return tuple(int(x) for x in parts)


class FlexiSampler:
  """Draws the flexible model-call arguments for a training step.

  `sampler(step)` returns e.g. `{'seqhw': 12}`; the same `(seed, step)` gives
  the same dict on every host, in every process, across restarts.
  """

  def __init__(
      self,
      flexi_config: Optional[Mapping[str, Any]],
      seed: Union[int, Sequence[int]] = 0,
  ):
    """`seed`: a non-negative int or a tuple of them, e.g. (experiment_id, work_unit_id)."""
    self._seed = _parse_seed(seed)
    self._values: Dict[str, Tuple[Hashable, ...]] = {}
    self._probs: Dict[str, np.ndarray] = {}
    for name, spec in dict(flexi_config or {}).items():
      if not isinstance(name, str) or not name:
        raise UserError(f"Flexi argument name {name!r} must be a non-empty string.")
      if not hasattr(spec, "keys"):
        raise UserError(
          f"flexi.{name}={spec!r} must be a dict like dict(v=(...), p='uniform')."
        )
      unknown = sorted(set(spec.keys()) - set(SPEC_KEYS))
      if unknown:
        raise UserError(f"flexi.{name} has unknown keys {unknown}; allowed: {list(SPEC_KEYS)}.")
      values = spec.get("v")
      if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
        raise UserError(f"flexi.{name}.v={values!r} must be a non-empty sequence of values.")
      values = tuple(_to_hashable(v) for v in values)
      if not values:
        raise UserError(f"flexi.{name}.v={values!r} must be a non-empty sequence of values.")
      self._values[name] = values
      self._probs[name] = _parse_probs(name, spec.get("p", "uniform"), len(values))

  @property
  def names(self) -> Tuple[str, ...]:
    """The flexible argument names, in config order."""
    return tuple(self._values)

  @property
  def seed(self) -> Tuple[int, ...]:
    """The seed all draws derive from, as a tuple of ints."""
    return self._seed

  def values(self, name: str) -> Tuple[Hashable, ...]:
    """All candidate values of one argument (e.g. to evaluate at each)."""
    if name not in self._values:
      raise UserError(f"Unknown flexi argument {name!r}; known: {list(self._values)}.")
    return self._values[name]

  def probabilities(self, name: str, step: int) -> np.ndarray:
    """Sampling probabilities of `name` at `step` (constant today; curriculum hook)."""
    self.values(name)  # validates the name
    del step  # Constant over training for now.
    return self._probs[name].copy()

  def __call__(self, step: int) -> Dict[str, Hashable]:
    """Draws `{arg_name: value}` for `step`, a pure function of (seed, step)."""
    if isinstance(step, bool):
      raise ValueError(f"step={step!r} must be a non-negative int.")
    try:
      step = operator.index(step)
    except TypeError as e:
      raise ValueError(f"step={step!r} must be a non-negative int.") from e
    if step < 0:
      raise ValueError(f"step={step!r} must be a non-negative int.")
    out = {}
    for name, values in self._values.items():
      # One independent stream per argument: adding/removing another flexi
      # argument does not change this one's sequence.
      key = [*self._seed, step, _SALT, zlib.crc32(name.encode("utf-8"))]
      idx = np.random.default_rng(key).choice(len(values), p=self.probabilities(name, step))
      out[name] = values[int(idx)]
    return out

  def all_values(self) -> List[Dict[str, Hashable]]:
    """Every combination of argument values (cartesian product, config order)."""
    names = self.names
    return [dict(zip(names, combo)) for combo in itertools.product(*self._values.values())]

  def __repr__(self) -> str:
    specs = ", ".join(
      f"{n}=(v={self._values[n]}, p={np.round(self._probs[n], 4).tolist()})" for n in self.names
    )
    return f"FlexiSampler(seed={self._seed}, {specs})"
