"""Training configs: the schema of known keys, its defaults, and validation.

A config file is big_vision-style: `get_config(arg)` returning a ConfigDict.
`complete(config)` overlays it on `default_config()`; a key the schema does not
know, or a value of the wrong kind, raises a ValueError naming the key before
anything is compiled. The result is locked so later typos fail too.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Optional

import ml_collections

from flexivit_jax import checkpoint, evaluators, losses
from flexivit_jax.model import FlexiViT
from flexivit_jax.errors import UserError

# Dicts whose keys are free (their content is checked where it is used).
FREE_FORM = ("model", "flexi", "evals", "optax", "distill.teachers", "input.data",
             "model_load", "mesh", "eval_flexi", "schedule")
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(FlexiViT)
                     if f.name not in ("parent", "name"))
FLEXI_ARGS = ("seqhw", "patch_size")
PARAM_SHARDINGS = ("replicated", "fsdp")
EVAL_TYPES = ("classification",)
TEACHER_COMBINE = ("sum", "mean")
EVAL_KEYS = ("type", "data", "pp", "batch_size", "log_steps", "log_percent", "label_mapping")


def default_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = ml_collections.FieldReference(None, field_type=int)
  c.total_epochs = ml_collections.FieldReference(None, field_type=float)

  c.input = ml_collections.ConfigDict()
  c.input.data = dict(name="sklearn_digits", split="train")
  c.input.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.input.pp = ""
  c.input.batch_size = 64
  c.input.num_threads = 4
  c.input.prefetch = 2

  c.model = dict(num_classes=10)
  c.model_init = ml_collections.FieldReference(None, field_type=str)  # npz / workdir / shortcut.
  c.model_load = dict(dont_load=())
  c.init_head_bias = ml_collections.FieldReference(None, field_type=float)

  c.flexi = dict(seqhw=dict(v=(7,), p="uniform"))
  c.eval_flexi = ml_collections.FieldReference(None, field_type=dict)  # Default: flexi's values.

  c.loss = "softmax_xent"
  c.distill = ml_collections.ConfigDict()
  c.distill.teachers = {}  # name -> dict(model=..., init=path, input_key=..., call=dict(...))
  c.distill.temperature = 1.0
  c.distill.combine_teachers = "sum"  # As big_vision: the KL terms of several teachers add up.

  c.lr = 1e-3
  c.wd = 1e-4
  c.schedule = dict(decay_type="stair", warmup_steps=0)  # big_vision's defaults.
  c.grad_clip_norm = ml_collections.FieldReference(1.0, field_type=float)
  c.optax_name = "scale_by_adam"
  c.optax = dict(mu_dtype="bfloat16")
  c.mixup = dict(p=0.0, n=2, fold_in=None)  # n, fold_in: big_vision's keys, one value each.

  c.evals = {}
  c.log_training_steps = 50
  c.log_eval_steps = 1000
  c.ckpt_steps = 1000
  c.keep_ckpt = 3  # Keep the newest N train-state checkpoints (orbax, workdir/checkpoints/).
  c.keep_ckpt_every = ml_collections.FieldReference(None, field_type=int)  # Also keep every K-th step.
  c.preemption_check_steps = 10  # Multi-process without JAX's preemption service: poll SIGTERM every N steps.
  c.progress_bar = True

  c.mesh = dict(data=-1, fsdp=1)
  c.param_sharding = "replicated"
  c.aot_compile = False
  c.compile_cache_dir = ml_collections.FieldReference(None, field_type=str)
  c.check_nan = True
  return c


def _merge(defaults: ml_collections.ConfigDict, user: Any, prefix: str = "") -> None:
  for key, value in user.items():
    name = f"{prefix}{key}"
    if key not in defaults:
      known = ", ".join(sorted(defaults.keys()))
      raise UserError(f"unknown config key {name!r}; known keys{' of ' + prefix[:-1] if prefix else ''}: {known}")
    current = defaults[key]
    if isinstance(current, ml_collections.ConfigDict) and name not in FREE_FORM:
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise UserError(f"config key {name!r} must be a dict, got {value!r}")
      _merge(current, value, name + ".")
    else:
      if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
      if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      try:
        defaults[key] = value
      except (TypeError, ValueError) as e:
        raise UserError(f"bad value for config key {name!r}: {value!r} ({e})") from None


def complete(config: Any) -> ml_collections.ConfigDict:
  """Overlays a user config on the defaults, validates it, and locks the result."""
  full = default_config()
  _merge(full, config)
  validate(full)
  full.lock()
  return full


def _positive_int(config, key: str, allow_none: bool = False) -> None:
  value = config[key]
  if value is None and allow_none:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UserError(f"config key {key!r} must be a positive int, got {value!r}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks values that can be checked without data or devices."""
  if (c.total_steps is None) == (c.total_epochs is None):
    raise UserError("set exactly one of config keys 'total_steps' and 'total_epochs' "
                     f"(got total_steps={c.total_steps}, total_epochs={c.total_epochs})")
  for key in ("log_training_steps", "log_eval_steps", "ckpt_steps", "keep_ckpt",
              "preemption_check_steps"):
    _positive_int(c, key)
  _positive_int(c, "keep_ckpt_every", allow_none=True)
  _positive_int(c, "total_steps", allow_none=True)
  _positive_int(c.input, "batch_size")
  if not c.input.pp:
    raise UserError("config key 'input.pp' (the preprocessing string) is empty")
  bad = sorted(set(c.model) - set(MODEL_FIELDS))
  if bad:
    raise UserError(f"unknown config key 'model.{bad[0]}'; FlexiViT fields: "
                     f"{', '.join(MODEL_FIELDS)}")
  for name in c.flexi:
    if name not in FLEXI_ARGS:
      raise UserError(f"unknown flexi argument 'flexi.{name}'; allowed: {FLEXI_ARGS}")
  if c.loss not in losses.LOSSES:
    raise UserError(f"unknown config value loss={c.loss!r}; allowed: {', '.join(losses.LOSSES)}")
  if c.param_sharding not in PARAM_SHARDINGS:
    raise UserError(f"unknown param_sharding {c.param_sharding!r}; allowed: {PARAM_SHARDINGS}")
  bad = sorted(set(c.mesh) - {"data", "fsdp"})
  if bad:
    raise UserError(f"unknown mesh axis 'mesh.{bad[0]}'; allowed: data, fsdp")
  for name, ev in c.evals.items():
    kind = ev.get("type", "classification")
    if kind not in EVAL_TYPES:
      raise UserError(f"evals.{name}.type={kind!r} is unknown; allowed: {EVAL_TYPES}")
    unknown = sorted(set(ev) - set(EVAL_KEYS))
    if unknown:
      raise UserError(f"unknown config key 'evals.{name}.{unknown[0]}'; allowed: "
                       f"{', '.join(EVAL_KEYS)}")
    if "log_steps" in ev and "log_percent" in ev:
      raise UserError(f"evals.{name}: give log_steps or log_percent, not both")
    percent = ev.get("log_percent")
    if percent is not None and not 0 < percent <= 1:
      raise UserError(f"evals.{name}.log_percent={percent!r} must be a fraction in (0, 1]")
    if "data" not in ev or "pp" not in ev:
      raise UserError(f"evals.{name} needs 'data' and 'pp'")
    evaluators.load_label_mapping(ev.get("label_mapping"), c.model.get("num_classes"))
  unknown = sorted(set(c.model_load) - {"dont_load", "kernel"})
  if unknown:
    raise UserError(f"unknown config key 'model_load.{unknown[0]}'; allowed: dont_load, kernel")
  if c.model_load.get("kernel", "keep") not in checkpoint.KERNEL_LOAD_MODES:
    raise UserError(f"model_load.kernel={c.model_load.kernel!r} is unknown; allowed: "
                    f"{checkpoint.KERNEL_LOAD_MODES} (default 'keep'; 'pi_resize' as big_vision)")
  if c.distill.combine_teachers not in TEACHER_COMBINE:
    raise UserError(f"distill.combine_teachers={c.distill.combine_teachers!r} is unknown; "
                    f"allowed: {TEACHER_COMBINE}")
  if c.mixup.n != 2 or c.mixup.fold_in is not None:
    raise UserError(f"mixup n={c.mixup.n}, fold_in={c.mixup.fold_in!r}: this trainer mixes "
                     "n=2 images (a batch with its roll) with a per-step key (fold_in=None)")
  for name, teacher in c.distill.teachers.items():
    unknown = sorted(set(teacher) - {"model", "init", "input_key", "call"})
    if unknown:
      raise UserError(f"unknown config key 'distill.teachers.{name}.{unknown[0]}'; allowed: "
                       "model, init, input_key, call")
    if "model" not in teacher or "init" not in teacher:
      raise UserError(f"distill.teachers.{name} needs 'model' and 'init' (a checkpoint)")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise UserError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_flexivit_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None) if arg else module.get_config()


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'runlocal,baseline,steps=10' into typed fields."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in out:
      raise UserError(f"unknown config argument {key!r}; allowed: {', '.join(out)}")
    kind = type(out[key])
    out[key] = (kind(value) if kind is not bool else value.lower() in ("1", "true", "yes")) \
        if eq else True
  return out
