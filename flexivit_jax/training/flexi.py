"""Per-step sampling of FlexiViT's flexible model-call arguments.

FlexiViT trains one model at many sequence lengths / patch sizes: each step
draws, e.g., `seqhw` (the patch-grid side) from a list of values. Config form
(as in big_vision)::

  config.flexi = dict(
    seqhw=dict(v=(5, 6, 8, 10, 12, 15, 16, 20, 24, 30), p='uniform'),
    patch_size=dict(v=((8, 8), (16, 16)), p=(0.3, 0.7)),
  )

A curriculum changes the distribution over training: instead of one dict, a
list of stages, each holding until which fraction of the total steps it
applies (increasing, the last 1.0)::

  config.flexi = dict(seqhw=[
    dict(until=0.25, v=(5, 8), p='uniform'),   # coarse patches first,
    dict(until=0.75, v=(8, 10, 12)),
    dict(until=1.0, v=(15,)),                  # then the target patch.
  ])

Step `s` belongs to the first stage with `s < round(until * total_steps)`.

Every key names a model-call argument. The draw is a pure function of
`(seed, step, argument name)` (`seed` may be a tuple such as
(experiment id, work-unit id)), so all hosts pick the same value without any
communication and a resumed run replays exactly the same sequence. Values come
back as hashable python objects (ints, tuples) so they can be static jit
arguments; `all_values()` lists every combination for ahead-of-time
compilation and for evaluating at every setting.

The stage only selects which values and weights the draw uses; the random
stream itself is the same, so sampling stays a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import operator
import zlib
from typing import (Any, Dict, Hashable, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from flexivit_jax.errors import UserError

FLEXI_ARGS = ("seqhw", "patch_size")  # The FlexiViT call arguments a spec may draw.
SPEC_KEYS = ("v", "p")
STAGE_KEYS = ("until", "v", "p")
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
    raise UserError(f"{name}.p={p!r}: allowed are 'uniform' or a sequence of weights.")
  try:
    probs = np.asarray(p, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise UserError(f"{name}.p={p!r} must be 'uniform' or a sequence of numbers.") from e
  if probs.ndim != 1 or probs.shape[0] != num_values:
    raise UserError(
      f"{name}.p={p!r} must have one weight per value ({num_values} values)."
    )
  if not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
    raise UserError(
      f"{name}.p={p!r} must be finite, non-negative and sum to > 0."
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
      total_steps: Optional[int] = None,
  ):
    """`seed`: a non-negative int or a tuple of them, e.g. (experiment_id, work_unit_id).

    `total_steps` turns the `until` fractions of a curriculum into steps; it is
    required only when some argument has several stages.
    """
    self._seed = _parse_seed(seed)
    self._total_steps = total_steps
    self._stages: Dict[str, List[_Stage]] = {}
    for name, spec in dict(flexi_config or {}).items():
      if not isinstance(name, str) or not name:
        raise UserError(f"Flexi argument name {name!r} must be a non-empty string.")
      self._stages[name] = _parse_stages(name, spec, total_steps)

  @property
  def names(self) -> Tuple[str, ...]:
    """The flexible argument names, in config order."""
    return tuple(self._stages)

  @property
  def seed(self) -> Tuple[int, ...]:
    """The seed all draws derive from, as a tuple of ints."""
    return self._seed

  def values(self, name: str) -> Tuple[Hashable, ...]:
    """All candidate values of one argument (e.g. to evaluate at each)."""
    if name not in self._stages:
      raise UserError(f"Unknown flexi argument {name!r}; known: {list(self._stages)}.")
    return _union(stage.values for stage in self._stages[name])

  def stage(self, name: str, step: int) -> "_Stage":
    """The stage (values, probabilities, step range) `name` is drawn from at `step`."""
    self.values(name)  # validates the name
    stages = self._stages[name]
    return next((st for st in stages if step < st.end), stages[-1])

  def stages(self, name: str) -> Tuple["_Stage", ...]:
    """Every stage of `name`, in order (one for a constant distribution)."""
    self.values(name)
    return tuple(self._stages[name])

  def probabilities(self, name: str, step: int) -> np.ndarray:
    """Sampling probabilities of `name` at `step`, one per `values(name)` entry."""
    stage = self.stage(name, step)
    weights = dict(zip(stage.values, stage.probs))
    return np.asarray([weights.get(v, 0.0) for v in self.values(name)])

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
    for name in self._stages:
      # One independent stream per argument: adding/removing another flexi
      # argument does not change this one's sequence.
      key = [*self._seed, step, _SALT, zlib.crc32(name.encode("utf-8"))]
      stage = self.stage(name, step)
      idx = np.random.default_rng(key).choice(len(stage.values), p=stage.probs)
      out[name] = stage.values[int(idx)]
    return out

  def all_values(self) -> List[Dict[str, Hashable]]:
    """Every combination that can be drawn (cartesian product within each stage).

    With one stage per argument this is the full product in config order; with a
    curriculum, only the combinations some step can draw, in order of appearance.
    """
    names = self.names
    starts = sorted({st.start for n in names for st in self._stages[n]}) or [0]
    combos = []
    for start in starts:
      per_arg = [self.stage(n, start).values for n in names]
      combos.extend(itertools.product(*per_arg))
    return [dict(zip(names, combo)) for combo in _union([combos])]

  def __repr__(self) -> str:
    specs = ", ".join(
      f"{n}=[" + "; ".join(
        f"until step {st.end}: v={st.values}, p={np.round(st.probs, 4).tolist()}"
        for st in self._stages[n]) + "]" for n in self.names)
    return f"FlexiSampler(seed={self._seed}, {specs})"


@dataclasses.dataclass(frozen=True)
class _Stage:
  """Values and probabilities drawn for steps start..end-1."""
  values: Tuple[Hashable, ...]
  probs: np.ndarray
  start: int
  end: Union[int, float]  # math.inf for a constant distribution without total_steps.


def _union(groups) -> Tuple[Hashable, ...]:
  """Concatenation of the groups without repeats, in order of first appearance."""
  return tuple(dict.fromkeys(v for group in groups for v in group))


def _parse_values(where: str, spec: Any) -> Tuple[Tuple[Hashable, ...], np.ndarray]:
  values = spec.get("v")
  if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
    raise UserError(f"{where}.v={values!r} must be a non-empty sequence of values.")
  values = tuple(_to_hashable(v) for v in values)
  if not values:
    raise UserError(f"{where}.v={values!r} must be a non-empty sequence of values.")
  return values, _parse_probs(where, spec.get("p", "uniform"), len(values))


def _parse_stages(name: str, spec: Any, total_steps: Optional[int]) -> List[_Stage]:
  """One stage for `dict(v=..., p=...)`, several for a list of `dict(until=...)`."""
  if hasattr(spec, "keys"):
    unknown = sorted(set(spec.keys()) - set(SPEC_KEYS))
    if unknown:
      raise UserError(f"flexi.{name} has unknown keys {unknown}; allowed: {list(SPEC_KEYS)} "
                      "(or a list of stages dict(until=FRACTION, v=..., p=...)).")
    values, probs = _parse_values(f"flexi.{name}", spec)
    return [_Stage(values, probs, 0, total_steps if total_steps else math.inf)]
  if isinstance(spec, (str, bytes)) or not isinstance(spec, (list, tuple)) or not spec:
    raise UserError(f"flexi.{name}={spec!r} must be a dict like dict(v=(...), p='uniform') "
                    "or a non-empty list of stages dict(until=FRACTION, v=..., p=...).")
  if total_steps is None:
    raise UserError(f"flexi.{name} is a curriculum (a list of stages): the sampler needs "
                    "total_steps to turn its `until` fractions into steps.")
  stages, start, previous = [], 0, 0.0
  for i, stage in enumerate(spec):
    where = f"flexi.{name}[{i}]"
    if not hasattr(stage, "keys"):
      raise UserError(f"{where}={stage!r} must be a dict(until=FRACTION, v=..., p=...).")
    unknown = sorted(set(stage.keys()) - set(STAGE_KEYS))
    if unknown:
      raise UserError(f"{where} has unknown keys {unknown}; allowed: {list(STAGE_KEYS)}.")
    until = stage.get("until")
    if isinstance(until, bool) or not isinstance(until, numbers.Real) or not previous < until <= 1:
      raise UserError(f"{where}.until={until!r} must be a fraction of the total steps in "
                      f"({previous}, 1], increasing from stage to stage.")
    previous = float(until)
    end = int(round(until * total_steps))
    values, probs = _parse_values(where, stage)
    stages.append(_Stage(values, probs, start, end))
    start = end
  if previous != 1.0:
    raise UserError(f"flexi.{name}: the last stage must have until=1.0 (got {previous}), "
                    "so that every step belongs to a stage.")
  return stages
