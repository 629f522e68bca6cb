"""Evaluators, built by `type` as big_vision's `Evaluator(predict_fn, **cfg)`.

`TYPES` maps a config's `evals.<name>.type` to its evaluator class; each class
names the config keys it reads (`KEYS`) and checks them (`check_config`), the task
whose models it scores (`TASK`: classification, segmentation), names the model output
its predict function returns (`output_name`: logits, pre-logits, ...), and is built
with a predict function `(params, images, flexi) -> that output` and those keys;
`log_values(results)` are its numbers to log. The trainer, the evaluate CLI, the
analyses and the notebook run these objects. Types: `classification`, `fewshot` (alias
`fewshot_lsr`, big_vision's linear probes) and `retrieval` (cosine nearest neighbours
across sizes), the last two on the features of `features`, and `segmentation` (mIoU and
pixel accuracy of a Segmenter). Beside them: `flops` (FLOPs from XLA), `predict` (a model served at any
size), `loading` (a checkpoint and its model) and `sweep` (one model at many sizes).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

from flexivit_jax.errors import UserError, did_you_mean
from flexivit_jax.evaluators.classification import ClassificationEvaluator
from flexivit_jax.evaluators.fewshot import FewshotEvaluator
from flexivit_jax.evaluators.retrieval import RetrievalEvaluator
from flexivit_jax.evaluators.segmentation import SegmentationEvaluator

TYPES = {"classification": ClassificationEvaluator, "fewshot": FewshotEvaluator,
         "fewshot_lsr": FewshotEvaluator, "retrieval": RetrievalEvaluator,
         "segmentation": SegmentationEvaluator}
DEFAULT_TYPE = "classification"
# Keys of every evaluator, read by the trainer: its kind and its cadence (default:
# the config's log_eval_steps; log_percent is a fraction of the run's steps).
COMMON_KEYS = ("type", "log_steps", "log_percent")


def evaluator_class(name: str, cfg: Mapping[str, Any]) -> type:
  """The class of `cfg["type"]` (default classification); `name` is its config key."""
  kind = cfg.get("type", DEFAULT_TYPE)
  if kind not in TYPES:
    raise UserError(f"{name}.type={kind!r} is unknown; allowed: {', '.join(TYPES)}")
  return TYPES[kind]


def _check_keys(name: str, cfg: Mapping[str, Any], allowed) -> None:
  for key in cfg:
    if key not in allowed:
      raise UserError(f"unknown config key '{name}.{key}'{did_you_mean(key, allowed)}; "
                      f"allowed there: {', '.join(sorted(allowed))}")


def _check_cadence(name: str, cfg: Mapping[str, Any]) -> None:
  steps, percent = cfg.get("log_steps"), cfg.get("log_percent")
  if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0):
    raise UserError(f"{name}: config key 'log_steps' must be a positive int, got {steps!r}")
  if "log_steps" in cfg and "log_percent" in cfg:
    raise UserError(f"{name}: give log_steps or log_percent, not both")
  if percent is not None and not (isinstance(percent, (int, float)) and 0 < percent <= 1):
    raise UserError(f"{name}.log_percent={percent!r} must be a fraction in (0, 1]")


def check_config(name: str, cfg: Any, num_classes: Optional[int] = None,
                 task: Optional[str] = None) -> None:
  """Checks one evaluator's config (`name`: its key, e.g. 'evals.val') without data or
  devices: its type, its keys, its cadence, that it scores the run's `task` (if given)
  and what its class checks."""
  if not hasattr(cfg, "get"):
    raise UserError(f"config key {name!r} must be a dict of evaluator keys, got {cfg!r}")
  cls = evaluator_class(name, cfg)
  if task is not None and cls.TASK != task:
    fitting = [t for t, c in TYPES.items() if c.TASK == task]
    raise UserError(f"{name}.type={cfg.get('type', DEFAULT_TYPE)!r} scores {cls.TASK} but "
                    f"config task={task!r}; set {name}.type to one of {fitting}")
  _check_keys(name, cfg, COMMON_KEYS + cls.KEYS)
  _check_cadence(name, cfg)
  cls.check_config(name, cfg, num_classes)


def output_name(name: str, cfg: Mapping[str, Any]) -> str:
  """The model output (the key of the model's outputs dict) the evaluator of `cfg` reads."""
  return evaluator_class(name, cfg).output_name(cfg)


def build(name: str, cfg: Mapping[str, Any], predict_fn, **kwargs):
  """The evaluator of `cfg` (its class's KEYS; the common keys are the caller's) around
  `predict_fn`; kwargs go to the class (placement, num_classes, gflops_fn)."""
  cls = evaluator_class(name, cfg)
  kwargs = {k: v for k, v in kwargs.items() if k in inspect.signature(cls).parameters}
  return cls(predict_fn, **{k: v for k, v in cfg.items() if k in cls.KEYS}, name=name, **kwargs)
