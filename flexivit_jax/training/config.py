"""Training configs: the schema of known keys, its defaults, overrides and validation.

A config file is big_vision-style: `get_config(arg)` returning a ConfigDict.
`complete(config, overrides)` overlays it on `default_config()`, applies
command-line overrides (`model.variant=B`), and checks every key: typed keys
against their default's type, the keys of free-form dicts (`model`, `input.data`,
`evals.<name>`, ...) against `FREE_KEYS`, then the values with the checks of the
modules that read them (`validate`). A bad key or value raises a UserError naming
it (with close matches) before anything is compiled. The result is locked so
later typos fail too.

Overrides are parsed here rather than by `ml_collections.config_flags` (even with
`lock_config=True`), which cannot give three things this CLI promises (tried with
ml_collections 1.1.0, `DEFINE_config_dict` over the completed demo config):
- setting a key a free-form dict does not hold yet: `--config.model.variant=S`
  (FlexiViT fields default to None, so configs leave them out) or a new eval
  `--config.evals.fewshot={...}` fail with `AttributeError: "'variant'"`, locked or not;
- one-line unknown-key errors listing what is allowed: `--config.no_such_key=1` raises
  `AttributeError` out of flag parsing (a traceback, not a flags error), and a typo
  gives two lines (`'log_trainig_steps'` / `Did you mean "log_training_steps" ...?`)
  without the allowed keys;
- keys of free-form dicts checked against what their owner reads (`model.widht`).
Wrong types it does report in one line naming the key (`flag --config.total_steps=abc:
invalid literal for int() with base 10: 'abc'`).
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple

import ml_collections

from flexivit_jax import paths
from flexivit_jax.checkpoints import adapt, sources
from flexivit_jax.errors import UserError, did_you_mean, one_line
from flexivit_jax import evaluators
from flexivit_jax.models import tasks, vit
from flexivit_jax.outputs import console
from flexivit_jax.training import losses, optim
from flexivit_jax.training.flexi import FLEXI_ARGS, SPEC_KEYS, FlexiSampler
from flexivit_jax.training.topologies import parse_topology

# What data.pipeline reads (importing data/ here would start TensorFlow before the CLI quiets it).
DATA_KEYS = ("name", "split", "data_dir", "folder", "streaming", "classes")
# The data dicts an evaluator may hold (the splits it reads); few-shot ones name theirs.
EVAL_DATA_KEYS = ("data", "gallery_data")
# What training.sharding reads (it imports data/ too).
MESH_AXES = ("data", "fsdp")
PARAM_SHARDINGS = ("replicated", "fsdp")
PROGRESS_BAR = ("auto", True, False)  # The older key: 'auto', a bar or none.
_ANY = None  # Keys of this dict are free (names of evals/teachers, optax kwargs).
# Dicts whose keys are not typed by `default_config`: the keys each may hold, from its owner.
FREE_KEYS = {
    "model": vit.MODEL_FIELDS,
    "model_load": adapt.MODEL_LOAD_KEYS,
    "input.data": DATA_KEYS,
    "flexi": FLEXI_ARGS,
    "flexi.*": SPEC_KEYS,
    "eval_flexi": FLEXI_ARGS,
    "eval_flexi.*": SPEC_KEYS,
    "evals": _ANY,
    "evals.*": _ANY,  # Each evaluator type checks its own keys (evaluators.check_config).
    "evals.*.data": DATA_KEYS,
    "evals.*.gallery_data": DATA_KEYS,  # A retrieval evaluator's gallery.
    "distill.teachers": _ANY,
    "distill.teachers.*": losses.TEACHER_KEYS,
    "distill.teachers.*.model": vit.MODEL_FIELDS,
    "distill.teachers.*.call": FLEXI_ARGS,
    "schedule": optim.SCHEDULE_KEYS,
    "optax": _ANY,
    "mixup": losses.MIXUP_KEYS,
    "mesh": MESH_AXES,
}
CURRICULA = ("flexi.*", "eval_flexi.*")  # Free dicts that may be lists of stages instead.


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

  c.task = "classification"  # models.tasks.TASKS: which model config.model builds.
  c.model = dict(num_classes=10)
  c.model_init = ml_collections.FieldReference(None, field_type=str)  # npz / workdir / shortcut.
  c.model_load = dict(dont_load=())
  c.init_head_bias = ml_collections.FieldReference(None, field_type=float)

  c.flexi = dict(seqhw=dict(v=(7,), p="uniform"))
  c.eval_flexi = ml_collections.FieldReference(None, field_type=dict)  # Default: flexi's values.

  c.loss = "softmax_xent"
  c.ignore_label = 255  # Segmentation: pixels with this label count in no loss or metric.
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
  # Microbatches per step, each device's share of the batch split evenly: the same update
  # with one microbatch's activations in memory (optim.check_accum_steps).
  c.grad_accum_steps = 1
  c.mixup = dict(p=0.0, n=2, fold_in=None)  # n, fold_in: big_vision's keys, one value each.

  c.evals = {}
  c.log_training_steps = 50
  c.log_eval_steps = 1000
  c.ckpt_steps = 1000
  c.keep_ckpt = 3  # Keep the newest N train-state checkpoints (orbax, workdir/checkpoints/).
  c.keep_ckpt_every = ml_collections.FieldReference(None, field_type=int)  # Also keep every K-th step.
  c.preemption_check_steps = 10  # Multi-process without JAX's preemption service: poll SIGTERM every N steps.
  c.progress = "auto"  # console.PROGRESS_MODES: 'auto' is a bar on a terminal, else log lines.
  c.progress_bar = ml_collections.FieldReference(None, field_type=object)  # Older: PROGRESS_BAR.

  c.mesh = dict(data=-1, fsdp=1)
  # The pod the config is written for ('v3-32', '8xH100', ...): `train --plan`'s default.
  c.topology = ml_collections.FieldReference(None, field_type=str)
  c.param_sharding = "replicated"
  c.aot_compile = False
  c.compile_cache_dir = ml_collections.FieldReference(None, field_type=str)
  c.check_nan = True
  return c


def _unknown_key(name: str, allowed: Iterable[str]) -> UserError:
  key = name.rsplit(".", 1)[-1]
  allowed = sorted(map(str, allowed))
  return UserError(f"unknown config key {name!r}{did_you_mean(key, allowed)}; allowed there: "
                   f"{', '.join(allowed)}")


def _free_keys(name: str) -> Tuple[Optional[str], Optional[Sequence[str]]]:
  """(the FREE_KEYS pattern `name` matches or None, the keys it may hold or None for any)."""
  for pattern, keys in FREE_KEYS.items():
    if fnmatch.fnmatchcase(name, pattern) and name.count(".") == pattern.count("."):
      return pattern, keys
  return None, None


def _is_dict(value: Any) -> bool:
  return isinstance(value, (dict, ml_collections.ConfigDict))


def check_free_keys(node: Any, prefix: str = "") -> None:
  """Every free-form dict is a dict (None where its default is) holding only keys it may."""
  for key, value in node.items():
    name = f"{prefix}{key}"
    pattern, keys = _free_keys(name)
    if pattern and pattern not in CURRICULA and not _is_dict(value) \
        and not (value is None and default_config().get(name, 0) is None):
      raise UserError(f"config key {name!r} must be a dict, got {value!r}")
    if prefix:
      pattern, keys = _free_keys(prefix[:-1])
      if pattern and keys is not None and key not in keys:
        raise _unknown_key(name, keys)
    if _is_dict(value):
      check_free_keys(value, name + ".")


def _kind(node: Any, key: str) -> Optional[type]:
  """The type a typed key holds, None for a free one (a key of a plain dict, any type)."""
  if not isinstance(node, ml_collections.ConfigDict) or key not in node:
    return None
  kind = node.get_type(key)
  return None if kind in (ml_collections.ConfigDict, object, type(None)) else kind


def _set(node: Any, key: str, value: Any, name: str) -> None:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if _kind(node, key) is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[key] = value
  except (TypeError, ValueError):
    kind = node.get_type(key).__name__ if key in node else "?"
    raise UserError(f"bad value for config key {name!r}: {value!r} is not "
                    f"{_article(kind)}") from None


def _merge(defaults: ml_collections.ConfigDict, user: Any, prefix: str = "") -> None:
  for key, value in user.items():
    name = f"{prefix}{key}"
    if key not in defaults:
      raise _unknown_key(name, defaults.keys())
    current = defaults[key]
    if isinstance(current, ml_collections.ConfigDict) and not _is_dict(value):
      raise UserError(f"config key {name!r} must be a dict, got {value!r}")
    if isinstance(current, ml_collections.ConfigDict) and not _free_keys(name)[0]:
      _merge(current, value, name + ".")
    else:
      _set(defaults, key, value, name)


def _article(noun: str) -> str:
  return ("an " if noun[:1] in "aeiou" else "a ") + noun


def parse_value(text: str, kind: Optional[type], what: str) -> Any:
  """A command-line value for a key of type `kind` (None: a Python literal or a string).

  `what` names the value in the error, e.g. 'config key total_steps'. A bare word is a
  string; text that opens a literal dict, list or tuple but is not one is an error.
  """
  if text == "None":
    return None
  try:
    if kind is bool:
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError(text)
    if kind in (int, float):
      return kind(text)
  except ValueError:
    raise UserError(f"bad value for {what}: {text!r} is not {_article(kind.__name__)}") from None
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
    if text.strip()[:1] in "{[(" and kind is not str:
      raise UserError(f"bad value for {what}: {text!r} is not a Python literal (only "
                      f"literals such as {{'key': 1}} are parsed: {type(e).__name__})") from None
    return text  # A bare word: a string.
  return text if kind is str and not isinstance(value, str) else value


def apply_override(config: ml_collections.ConfigDict, name: str, text: str) -> None:
  """Sets `config.<name>` from the command-line text `text` (any FlexiViT field too)."""
  *parents, key = name.split(".")
  node, path = config, ""
  for part in parents:
    path = f"{path}{part}"
    if part not in node:
      pattern, keys = _free_keys(path.rpartition(".")[0]) if "." in path else (None, None)
      if not pattern or (keys is not None and part not in keys):
        raise _unknown_key(path, keys if pattern else node.keys())
      node[part] = {}  # A new eval / teacher / data dict.
    node = node[part]
    if not _is_dict(node):
      raise UserError(f"config key {path!r} is {node!r}, not a dict: cannot set {name!r}")
    path += "."
  pattern, keys = _free_keys(path[:-1]) if path else (None, None)
  if key not in node and not (pattern and (keys is None or key in keys)):
    raise _unknown_key(name, keys if pattern else node.keys())
  value = parse_value(text, _kind(node, key), f"config key {name!r}")
  if key in node and isinstance(node, ml_collections.ConfigDict):
    _merge(node, {key: value}, path)  # A typed sub-dict (`input`, `distill`) is merged into.
  else:
    _set(node, key, value, name)


def complete(config: Any, overrides: Sequence[Tuple[str, str]] = ()) -> ml_collections.ConfigDict:
  """Overlays a user config and `(key, text)` overrides on the defaults; validates and locks."""
  full = default_config()
  try:
    _merge(full, config)
    for name, text in overrides:
      apply_override(full, name, text)
    check_free_keys(full)
    _fold_progress_bar(full)
    normalize_paths(full)
    teachers_follow_student_dtype(full)
    validate(full)
  except UserError as e:  # A ConfigDict in a message spans lines: keep the error one line.
    raise UserError(one_line(e)) from None
  full.lock()
  return full


def _fold_progress_bar(c: ml_collections.ConfigDict) -> None:
  """Configs that set the older `progress_bar` key keep working: True/False/'auto' set
  `progress` to 'bar'/'none'/'auto' (both may be set if they agree, as in a saved config)."""
  if c.progress_bar is None:
    return
  if c.progress_bar not in PROGRESS_BAR:
    raise UserError(f"config key 'progress_bar' is {c.progress_bar!r}; allowed: 'auto', "
                    "True, False (or use 'progress': " + ", ".join(console.PROGRESS_MODES) + ")")
  mode = {"auto": "auto", True: "bar", False: "none"}[c.progress_bar]
  if c.progress not in ("auto", mode):
    raise UserError(f"config keys 'progress'={c.progress!r} and 'progress_bar'="
                    f"{c.progress_bar!r} disagree; set only 'progress'")
  c.progress = mode


def _data_configs(c: ml_collections.ConfigDict) -> list:
  """Every data dict of a config: the training input's and each evaluator's."""
  found = [c.input.data] + [ev[key] for ev in c.evals.values()
                            for key in EVAL_DATA_KEYS if key in ev]
  return [d for d in found if hasattr(d, "get")]


def data_config(config: ml_collections.ConfigDict, data_cfg: Mapping[str, Any]) -> dict:
  """A data config of `config` (input.data or an eval's) with `input.data_dir` as its default."""
  out = dict(data_cfg)
  if config.input.data_dir and "data_dir" not in out:
    out["data_dir"] = config.input.data_dir
  return out


def normalize_paths(c: ml_collections.ConfigDict) -> None:
  """Makes every path-valued key absolute (`paths.normalize`; URLs and shortcuts kept).

  The one place config values that name files or directories are resolved, so a
  config means the same from any current directory and config.json records paths
  that `evaluate` can use from another one: data_dir and image folders,
  compile_cache_dir, label_mapping files, model_init and teacher inits
  (`sources.resolve_checkpoint`: a released checkpoint's name becomes its URL).
  """
  def fix(holder, key: str, resolve=paths.normalize) -> None:
    value = holder.get(key)
    if isinstance(value, str) and value:
      holder[key] = resolve(value)

  fix(c.input, "data_dir")
  fix(c, "compile_cache_dir")
  fix(c, "model_init", sources.resolve_checkpoint)
  for data_cfg in _data_configs(c):
    fix(data_cfg, "data_dir")
    fix(data_cfg, "folder")
  for ev in c.evals.values():
    fix(ev, "label_mapping")
    fix(ev, "data_dir")  # A few-shot evaluator's (its datasets are named, not data dicts).
  for teacher in c.distill.teachers.values():
    fix(teacher, "init", sources.resolve_checkpoint)


def teachers_follow_student_dtype(c: ml_collections.ConfigDict) -> None:
  """A teacher whose model dict sets no `dtype_mm` runs in the student's.

  The teacher's forward pass is as large as the student's (often larger), so it is
  where bfloat16 saves as much; a teacher that must stay float32 says so in its dict.
  """
  student = c.model.get("dtype_mm")
  if student is None:
    return
  for teacher in c.distill.teachers.values():
    model = teacher.get("model")
    if hasattr(model, "keys") and "dtype_mm" not in model:
      model["dtype_mm"] = student


def _positive_int(config, key: str, allow_none: bool = False) -> None:
  value = config[key]
  if value is None and allow_none:
    return
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise UserError(f"config key {key!r} must be a positive int, got {value!r}")


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks values that can be checked without data or devices: the trainer's own keys
  here, the others by the modules that read them."""
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
  if c.progress not in console.PROGRESS_MODES:
    raise UserError(f"config key 'progress' is {c.progress!r}; allowed: "
                    f"{', '.join(console.PROGRESS_MODES)}")
  for axis, size in c.mesh.items():
    if isinstance(size, bool) or not isinstance(size, int) or not (size > 0 or size == -1):
      raise UserError(f"config key 'mesh.{axis}' must be a positive int or -1, got {size!r}")
  if c.topology is not None:
    parse_topology(c.topology)
  if c.param_sharding not in PARAM_SHARDINGS:
    raise UserError(f"unknown param_sharding {c.param_sharding!r}; allowed: {PARAM_SHARDINGS}")
  tasks.from_config(c.model, c.task, "model")
  adapt.check_model_load(c.model_load)
  for key in ("flexi", "eval_flexi"):
    # Checks the spec's form (the values are checked against the images later). With
    # total_epochs the step count is known only once the data is: any count checks the form.
    FlexiSampler(c[key], total_steps=c.total_steps or 1_000_000)
  optim.check_config(c, c.total_steps)
  losses.check_config(c)
  for name, ev in c.evals.items():
    evaluators.check_config(f"evals.{name}", ev, c.model.get("num_classes"), task=c.task)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`."""
  path, _, arg = spec.partition(":")
  path = paths.normalize(path)
  if not os.path.isfile(path):
    raise UserError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("_flexivit_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} defines no get_config(arg)")
  return module.get_config(arg or None) if arg else module.get_config()


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument 'runlocal,baseline,steps=10' into typed fields."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in out:
      raise UserError(f"unknown config argument {key!r}{did_you_mean(key, out)}; allowed: "
                      f"{', '.join(out)}")
    out[key] = parse_value(value, type(out[key]), f"config argument {key!r}") if eq else True
  return out
