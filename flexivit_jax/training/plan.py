"""A pre-flight plan: will a training config fit the devices of a pod, and how fast would it run?

`make_plan(config, "v3-32")` works out the mesh the run would use there (`config.mesh` on
that many devices), the per-device batch and microbatch, and the most expensive step the
flexi spec can draw (the most tokens), then measures that train step from XLA's compiled
memory and cost analysis on this CPU, abstractly (`jax.jit(step).lower(ShapeDtypeStructs)
.compile()`: nothing is materialised, no data is read, nothing is written).

What is compiled is the run's own train step (`compiled_steps.make_train_step`: its loss,
teachers, mixup and optimizer) for ONE device at per-device shapes, not hundreds of
emulated devices: data parallelism runs the same program on every device. It is compiled
at batch 1 and 2 and at depth 1 and 2 (students and teachers), and the results are
extrapolated, linearly in batch and in depth (every example and every encoder block is
the same computation), to the real microbatch and depth; four small compiles instead of
one huge one. Per device:

- params, optimizer state, gradients: exact bytes of the abstract state, divided by the
  fsdp size where the trainer's sharding rule (`sharding.fsdp_axis`) splits an array;
- gathered params (fsdp only): one full float32 copy for the all-gathers (an upper bound:
  XLA can gather layer by layer);
- gradient accumulator (grad_accum_steps > 1): one more gradient-sized buffer;
- inputs: the per-device batch (images, labels, teacher images) and the teachers' params;
- activations: the compiled step's temporaries at the microbatch, less the gradients.

XLA:CPU keeps float32-sized, unrematerialised activations whatever `dtype_mm` and
`remat_policy` say (measured: docs/scaling.md), so `activations` is an upper bound for
bf16 or remat runs; beside it the plan gives the student's residuals for the backward
from JAX (`residual_bytes_per_example`), which do follow both settings. `fits` is
decided on the compiled (upper-bound) total.

Settings (model fields `dtype_mm`, `remat_policy`, `scan`; `grad_accum_steps`; fsdp) are
config overrides: `recommend` tries them in order of cost when the config does not fit.
`baseline_overrides` gives the step without any of them (float32 student and teachers, no
rematerialisation, one microbatch): the "before" of a plan table.

The model is the task's (`models.tasks`: a FlexiViT, or a Segmenter whose labels are int
class ids per pixel), so a segmentation config is planned with its decoder and its
full-resolution logits.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import time
import types
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import flops as flops_lib
from flexivit_jax.models import tasks
from flexivit_jax.models.vit import resolve_patch
from flexivit_jax.training import compiled_steps, initial_state, optim, sharding
from flexivit_jax.training import config as config_lib
from flexivit_jax.training.flexi import FlexiSampler
from flexivit_jax.training.topologies import (GIB, TOPOLOGY_EXAMPLES, Topology,
                                             parse_topology)

MFU = 0.4  # The default model-FLOPs utilisation the step time is predicted at.
MARGIN = 0.9  # "Fits" means at most this fraction of the device's memory.


# ----------------------------------------------------------------------------
# What a step of the config looks like: shapes, the costliest flexi value, the mesh.

SIZE_OPS = ("resize", "inception_crop", "decode_jpeg_and_inception_crop", "central_crop",
            "random_crop",
            # Segmentation's joint image/mask ops (data/ops_dense.py): the last one sets the size.
            "dense_resize", "dense_random_crop", "dense_central_crop", "dense_pad")


def image_sizes(pp: str) -> Dict[str, Tuple[int, int]]:
  """{batch key: (h, w)} of the images a pp string makes, read from its sizing ops (no data)."""
  from flexivit_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  sizes: Dict[str, Tuple[int, int]] = {}
  for spec in preprocess._split_ops(pp):  # pylint: disable=protected-access
    name, args, kwargs = preprocess._parse_op(spec)  # pylint: disable=protected-access
    if name == "copy":
      inkey, outkey = (list(args) + [kwargs.get("inkey"), kwargs.get("outkey")])[:2]
      if inkey in sizes:
        sizes[outkey] = sizes[inkey]
      continue
    size = args[0] if args else kwargs.get("size", kwargs.get("crop_size"))
    if name in SIZE_OPS and size is not None:
      key = kwargs.get("key", "image")
      out = kwargs.get("outkey") or key
      sizes[out] = (size, size) if isinstance(size, int) else tuple(size)
  return sizes


def tokens(flexi: Mapping[str, Any], image_hw: Tuple[int, int]) -> int:
  ph, pw = resolve_patch(image_hw, flexi.get("seqhw"), flexi.get("patch_size"))
  return (image_hw[0] // ph) * (image_hw[1] // pw)


def costliest_flexi(config) -> Tuple[Tuple[str, Any], ...]:
  """The flexi value with the most tokens: the step that needs the most memory and time."""
  image_hw = image_sizes(config.input.pp).get("image")
  if image_hw is None:
    raise UserError(f"cannot tell the image size from input.pp={config.input.pp!r}: the plan "
                    f"reads it from a sizing op ({', '.join(SIZE_OPS)}) on 'image'")
  values = FlexiSampler(config.flexi, seed=0, total_steps=config.total_steps or 1_000_000
                        ).all_values()
  return initial_state.flexi_key(max(values, key=lambda v: tokens(v, image_hw)))


# ----------------------------------------------------------------------------
# Measurements: one device's compiled train step at small batch and depth.


@dataclasses.dataclass(frozen=True)
class StepCost:
  """One device's step at full depth as `a + b * batch` (bytes of temporaries, FLOPs)."""
  temp_fixed: float
  temp_per_example: float
  flops_fixed: float
  flops_per_example: float
  param_bytes: int
  opt_bytes: int
  teacher_bytes: int
  input_bytes_per_example: int
  state_leaves: Tuple[Tuple[Tuple[int, ...], int], ...]  # (shape, itemsize) of params + opt.
  param_leaves: Tuple[Tuple[Tuple[int, ...], int], ...]
  compile_seconds: float = 0.0  # Wall time of the compiles behind these numbers.


def _with_depth(model_cfg: Mapping[str, Any], depth: int) -> dict:
  return dict(model_cfg, depth=depth)


def _abstract_step(config, depth: Optional[int], batch: int, flexi):
  """(jitted step, abstract state, teacher params, batch) of `config` on one device."""
  model_cfg = dict(config.model) if depth is None else _with_depth(
      config.model, depth)
  model = tasks.from_config(model_cfg, config.task)
  tx, _ = optim.make_optimizer(config, max(config.total_steps or 0, 1_000_000))
  teachers = initial_state.teachers_of(types.SimpleNamespace(teachers={
      name: dict(t, model=dict(t["model"]) if depth is None else _with_depth(t["model"], depth))
      for name, t in config.distill.teachers.items()}))
  sizes = image_sizes(config.input.pp)
  image = (*sizes["image"], 3)
  state = jax.eval_shape(initial_state.make_init_fn(model, tx, image, flexi,
                                                    config.init_head_bias), jax.random.key(0))
  teacher_params = {}
  batch_shapes = {"image": jax.ShapeDtypeStruct((batch, *image), jnp.float32),
                  "labels": _labels_shape(config, model, batch, sizes["image"])}
  for t in teachers:
    if t.input_key not in sizes:
      raise UserError(f"cannot tell the size of teacher {t.name!r}'s input {t.input_key!r} "
                      f"from input.pp={config.input.pp!r}")
    timage = (*sizes[t.input_key], 3)
    teacher_params[t.name] = jax.eval_shape(
        lambda m=t.model, c=t.call, s=timage: m.init(jax.random.key(0), jnp.zeros((1, *s)),
                                                     **dict(c))["params"])
    batch_shapes[t.input_key] = jax.ShapeDtypeStruct((batch, *timage), jnp.float32)
  step = compiled_steps.make_train_step(
      model, tx, compiled_steps.make_loss_fn(config), teachers, seed=0,
      mixup_p=float(config.mixup.get("p", 0.0) or 0.0))
  jitted = jax.jit(step, static_argnames=("flexi",), donate_argnums=(0,))
  return jitted, state, teacher_params, batch_shapes


def _labels_shape(config, model, batch: int, image_hw) -> jax.ShapeDtypeStruct:
  """Segmentation: int class ids per pixel (as `seg_labels` makes); else one-hot rows."""
  if config.task == "segmentation":
    return jax.ShapeDtypeStruct((batch, *image_hw), jnp.int32)
  return jax.ShapeDtypeStruct((batch, model.num_classes), jnp.float32)


def _nbytes(tree) -> int:
  return int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree)))


def _leaves(tree) -> Tuple[Tuple[Tuple[int, ...], int], ...]:
  return tuple((tuple(a.shape), a.dtype.itemsize) for a in jax.tree.leaves(tree))


# Buffer assignment and the FLOP count are made on the optimised HLO, before LLVM generates
# code, so the plan asks LLVM for no optimisation: the same memory and cost analysis in
# about half the compile time (checked for FlexiViT-B at seqhw 30: equal temp bytes and
# FLOPs, 35 s instead of 63 s on a loaded 2-core VM).
PLAN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                         "xla_llvm_disable_expensive_passes": True}


def _compiled(config, depth: int, batch: int, flexi):
  jitted, state, tparams, batch_shapes = _abstract_step(config, depth, batch, flexi)
  lowered = jitted.lower(state, tparams, batch_shapes, flexi=flexi)
  if jax.default_backend() == "cpu":
    return lowered.compile(PLAN_COMPILER_OPTIONS)
  return lowered.compile()


def _cost_key(config) -> str:
  """What a measurement depends on: models, teachers, loss, mixup, optimizer, shapes."""
  keys = ("task", "model", "distill", "loss", "mixup", "optax_name", "optax", "grad_clip_norm",
          "init_head_bias", "ignore_label")
  parts = {k: config[k].to_dict() if hasattr(config[k], "to_dict") else config[k] for k in keys}
  # A setting left at its default and the same setting spelled out are the same step.
  parts["model"] = {**SETTING_FIELDS, **parts["model"]}
  for teacher in parts["distill"].get("teachers", {}).values():
    teacher["model"] = {**SETTING_FIELDS, **teacher["model"]}
  return json.dumps(parts | {"pp": config.input.pp}, sort_keys=True, default=str)


_MEASURED: Dict[Tuple[str, Any], StepCost] = {}  # Per process: the plan writes no files.


def measure(config, flexi, batches: Tuple[int, int]) -> StepCost:
  """The step's costs at `flexi`, from compiles at two batch sizes (or one: (m, m),
  `batches_for(m, points=1)`); cached per model,
  teacher, loss, optimizer, shapes and batches (a table of topologies reuses them)."""
  key = (_cost_key(config), flexi, batches)
  if key not in _MEASURED:
    _MEASURED[key] = _measure(config, flexi, batches)
  return _MEASURED[key]


def batches_for(microbatch: int, points: int = 2) -> Tuple[int, int]:
  """The batch sizes to compile at: the microbatch itself and half of it. A step's peak
  memory is the larger of its activations and its gradient/update buffers, so it is linear
  in the batch only once activations dominate: measured at the microbatch it is exact, and
  other microbatches (recommendations) are extrapolated from there, then measured.

  `points=1`: the microbatch only, (m, m): half the compiles; memory at m is as exact, the
  FLOPs count the optimizer update once per microbatch (a fraction of a percent of a ViT
  step's), and other batch sizes are extrapolated in proportion (the fixed part unknown)."""
  if points == 1:
    return (microbatch, microbatch)
  return (max(1, microbatch // 2), microbatch) if microbatch > 1 else (1, 2)


def _measure(config, flexi, batches: Tuple[int, int]) -> StepCost:
  temp, fl = {}, {}
  b1, b2 = batches
  start = time.perf_counter()
  for depth in (1, 2):
    for batch in sorted(set(batches)):
      compiled = _compiled(config, depth, batch, flexi)
      temp[depth, batch] = compiled.memory_analysis().temp_size_in_bytes
      fl[depth, batch] = flops_lib.gflops(compiled) * 1e9
  seconds = time.perf_counter() - start
  full_depth = tasks.from_config(config.model, config.task).hparams()["depth"]

  def in_depth(values):  # f(D) = f(1) + (D - 1) * (f(2) - f(1)), per batch size.
    return {b: values[1, b] + (full_depth - 1) * (values[2, b] - values[1, b])
            for b in set(batches)}

  t, f = in_depth(temp), in_depth(fl)
  if b1 == b2:  # One point: in proportion to the batch (exact at b2).
    slope_t, slope_f = t[b2] / b2, f[b2] / b2
  else:
    slope_t, slope_f = (t[b2] - t[b1]) / (b2 - b1), (f[b2] - f[b1]) / (b2 - b1)
  _, state, tparams, batch_shapes = _abstract_step(config, None, 1, flexi)
  return StepCost(
      temp_fixed=t[b2] - slope_t * b2, temp_per_example=slope_t,
      flops_fixed=f[b2] - slope_f * b2, flops_per_example=slope_f,
      param_bytes=_nbytes(state["params"]), opt_bytes=_nbytes(state["opt_state"]),
      teacher_bytes=_nbytes(tparams), input_bytes_per_example=_nbytes(batch_shapes),
      state_leaves=_leaves(state), param_leaves=_leaves(state["params"]),
      compile_seconds=seconds)


def measurements() -> List[Dict[str, Any]]:
  """This process's measurements as JSON-able dicts (a table keeps them between runs)."""
  return [{"key": key, "flexi": repr(flexi), "batches": list(batches),
           "cost": dataclasses.asdict(cost)}
          for (key, flexi, batches), cost in _MEASURED.items()]


def _tuples(x):
  return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_measurements(entries: Sequence[Mapping[str, Any]]) -> int:
  """Adds `measurements()` entries (e.g. read back from a file) to this process's cache;
  a later `make_plan` of the same step (same cost key, flexi and batches) compiles nothing.
  Returns how many were added."""
  added = 0
  for e in entries:
    key = (e["key"], ast.literal_eval(e["flexi"]), tuple(e["batches"]))
    if key not in _MEASURED:
      cost = dict(e["cost"])
      cost["state_leaves"], cost["param_leaves"] = (_tuples(cost["state_leaves"]),
                                                    _tuples(cost["param_leaves"]))
      _MEASURED[key] = StepCost(**cost)
      added += 1
  return added


def measured_batches(config, flexi) -> List[Tuple[int, int]]:
  """The batch pairs this process has measured `config`'s step at (same cost key, flexi)."""
  key = _cost_key(config)
  return sorted(b for k, f, b in _MEASURED if k == key and f == flexi)


_RESIDUALS: Dict[Tuple[str, Any], int] = {}


def residual_bytes_per_example(config, flexi) -> int:
  """Bytes per example the student's backward keeps from its forward: the residuals of
  `jax.vjp` of its forward (full depth, abstract: traced, not compiled), at batch 2 less
  batch 1. They follow `dtype_mm` (bf16 residuals are 2 bytes) and `remat_policy` (a
  rematerialised block keeps its input only) as JAX hands them to any backend; XLA:CPU's
  compiled temporaries do not show either saving (docs/scaling.md), so the plan prints
  both. Not counted: a block's working set while it is recomputed, the teachers."""
  key = (_cost_key(config), flexi)
  if key not in _RESIDUALS:
    model = tasks.from_config(config.model, config.task)
    image = (*image_sizes(config.input.pp)["image"], 3)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image)),
                                               **dict(flexi))["params"])

    def forward(p, x):
      return model.apply({"params": p}, x, **dict(flexi), train=True,
                         rngs={"dropout": jax.random.key(0)})[0]

    def residuals(batch: int) -> int:
      images = jax.ShapeDtypeStruct((batch, *image), jnp.float32)
      return _nbytes(jax.eval_shape(lambda p, x: jax.vjp(forward, p, x)[1], params, images))

    _RESIDUALS[key] = max(0, residuals(2) - residuals(1))
  return _RESIDUALS[key]


def sharded_bytes(leaves, fsdp: int, mode: str) -> int:
  """Bytes per device of arrays (shape, itemsize) under the trainer's sharding rule."""
  total = 0
  for shape, itemsize in leaves:
    axis = sharding.fsdp_axis(shape, fsdp, mode)
    size = int(np.prod(shape)) * itemsize
    total += size // fsdp if axis is not None else size
  return total


# ----------------------------------------------------------------------------
# The plan.


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device memory (bytes) and time of a config's costliest step on a topology."""
  topology: Topology
  flexi: Tuple[Tuple[str, Any], ...]
  mesh: Dict[str, int]
  param_sharding: str
  batch_size: int
  per_device_batch: int
  accum_steps: int
  model_settings: Dict[str, Any]
  memory: Dict[str, int]
  flops_per_step: float  # All devices.
  mfu: float
  teacher_settings: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
  residuals_per_example: int = 0  # JAX's, by dtype_mm and remat_policy (not in `memory`).

  @property
  def residuals(self) -> int:
    """The student's residuals for one microbatch (see residual_bytes_per_example)."""
    return self.residuals_per_example * (self.per_device_batch // self.accum_steps)

  @property
  def total(self) -> int:
    return sum(self.memory.values())

  @property
  def fits(self) -> bool:
    return self.total <= MARGIN * self.topology.chip.hbm_bytes

  @property
  def step_seconds(self) -> float:
    peak = self.topology.devices * self.topology.chip.peak_flops
    return self.flops_per_step / (peak * self.mfu)

  def settings(self) -> Dict[str, Any]:
    """The settings this plan used, as config keys."""
    teachers = {f"distill.teachers.{name}.model.{k}": v
                for name, fields in self.teacher_settings.items() for k, v in fields.items()}
    return {**{f"model.{k}": v for k, v in self.model_settings.items()}, **teachers,
            "grad_accum_steps": self.accum_steps, "mesh.fsdp": self.mesh["fsdp"],
            "param_sharding": self.param_sharding}


SETTING_FIELDS = {"dtype_mm": "float32", "remat_policy": "none", "scan": False}


def model_settings(config, model_cfg=None) -> Dict[str, Any]:
  """The model's memory settings as the config sets them (their defaults where unset)."""
  model_cfg = config.model if model_cfg is None else model_cfg
  return {k: model_cfg.get(k, default) for k, default in SETTING_FIELDS.items()}


def teacher_settings(config) -> Dict[str, Dict[str, Any]]:
  """{teacher: {"dtype_mm": ...}}: a teacher only runs forward, so only its dtype matters."""
  return {name: {k: v for k, v in model_settings(config, t["model"]).items() if k == "dtype_mm"}
          for name, t in sorted(config.distill.teachers.items())}


def baseline_overrides(config) -> Dict[str, Any]:
  """The step without the memory options: float32 matmuls and activations (student and
  teachers), no rematerialisation, one microbatch (a table's "before")."""
  out: Dict[str, Any] = {"grad_accum_steps": 1, "model.dtype_mm": "float32",
                         "model.remat_policy": "none"}
  out.update({f"distill.teachers.{name}.model.dtype_mm": "float32"
              for name in config.distill.teachers})
  return out


def make_plan(config, topology: Any, mfu: float = MFU,
              measure_at: Optional[Tuple[int, int]] = None, points: int = 2) -> Plan:
  """The plan of `config` as it is on `topology` (a name or a Topology); `measure_at`: the
  two batch sizes to measure at (default: `batches_for(microbatch, points)`, exact at the
  microbatch; others extrapolate)."""
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  if not 0 < mfu <= 1:
    raise UserError(f"mfu={mfu!r} must be in (0, 1]")
  mesh = sharding.mesh_sizes(config.mesh, topo.devices)
  batch = config.input.batch_size
  if batch % topo.devices:
    raise UserError(f"input.batch_size={batch} does not split over the {topo.devices} "
                    f"devices of {topo.name}; make it a multiple of {topo.devices}")
  per_device = batch // topo.devices
  optim.check_accum_steps(config.grad_accum_steps, batch, topo.devices)
  flexi = costliest_flexi(config)
  micro = per_device // config.grad_accum_steps
  cost = measure(config, flexi, measure_at or batches_for(micro, points))
  fsdp, mode = mesh["fsdp"], config.param_sharding
  grads_full = sum(int(np.prod(s)) * 4 for s, _ in cost.param_leaves)  # float32 gradients.
  params = sharded_bytes(cost.param_leaves, fsdp, mode)
  grads = sharded_bytes([(s, 4) for s, _ in cost.param_leaves], fsdp, mode)
  activations = cost.temp_fixed + cost.temp_per_example * micro - grads_full
  memory = {
      "params": params,
      "optimizer": sharded_bytes(cost.state_leaves, fsdp, mode) - params,
      "gradients": grads,
      "accumulator": grads if config.grad_accum_steps > 1 else 0,
      "gathered params": grads_full if params < cost.param_bytes else 0,
      "inputs": cost.input_bytes_per_example * per_device + cost.teacher_bytes,
      "activations": int(max(0.0, activations)),
  }
  # The microbatches' forward and backward; the update once (the compile counts one per call).
  update = cost.flops_fixed
  flops = (update + cost.flops_per_example * per_device) * topo.devices
  return Plan(topo, flexi, mesh, mode, batch, per_device, config.grad_accum_steps,
              model_settings(config), memory, flops, mfu, teacher_settings(config),
              residual_bytes_per_example(config, flexi))


def with_overrides(config, overrides: Mapping[str, Any]):
  """The config with `{dotted key: value}` set (validated as a run would be)."""
  return config_lib.complete(config.to_dict(), [(k, repr(v) if not isinstance(v, str) else v)
                                                for k, v in overrides.items()])


def candidates(config, topo: Topology) -> List[Dict[str, Any]]:
  """Settings to try when the config does not fit, cheapest first.

  Model settings first (bf16 matmuls and activations cost nothing; rematerialising a
  block costs one more forward), each with the fewest microbatches that fit; fsdp last
  (it saves only the train state, which is small next to the activations of a ViT).
  """
  per_device = config.input.batch_size // topo.devices
  current = model_settings(config)
  model_steps = [{}]  # The config's own model settings, then bf16, then bf16 + remat.
  if current["dtype_mm"] != "bfloat16":
    model_steps.append({"model.dtype_mm": "bfloat16"})
  if current["remat_policy"] != "nothing_saveable":
    model_steps.append({**model_steps[-1], "model.remat_policy": "nothing_saveable"})
  fsdps = [f for f in (1, 2, 4, 8, 16, 32, 64) if topo.devices % f == 0]
  out = []
  for model in model_steps:
    for fsdp in (1, max(fsdps)):
      for k in (d for d in range(1, per_device + 1) if per_device % d == 0):
        extra = {"mesh.data": -1, "mesh.fsdp": fsdp, "param_sharding": "fsdp"} if fsdp > 1 else {}
        out.append({**model, "grad_accum_steps": k, **extra})
  return out


def recommend(config, topology: Any, mfu: float = MFU,
              extrapolate_from: Optional[Tuple[int, int]] = None, exact: bool = True,
              points: int = 2) -> Tuple[Optional[Dict[str, Any]], Optional[Plan]]:
  """(overrides, plan) of the first candidate that fits with margin, or (None, None).

  Candidates are screened by extrapolating from compiles at `extrapolate_from` (default:
  the config's own microbatch and half of it), so a table that already measured another
  microbatch of the same step screens from that one and compiles only the winner;
  `exact=False` takes the first candidate whose extrapolation fits, compiling nothing
  more for it (cheaper, less sure: a table marks such rows)."""
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  measured_at = extrapolate_from or batches_for(
      config.input.batch_size // topo.devices // config.grad_accum_steps, points)
  for overrides in candidates(config, topo):
    candidate = with_overrides(config, overrides)
    # Extrapolated from the compiles at the config's own microbatch first (cheap), then
    # measured at the candidate's microbatch before it is recommended.
    screened = make_plan(candidate, topo, mfu, measure_at=measured_at)
    if not exact:
      if screened.fits:
        return overrides, screened
      continue
    if screened.total > 1.25 * MARGIN * topo.chip.hbm_bytes:
      continue
    plan = make_plan(candidate, topo, mfu, points=points)
    if plan.fits:
      return overrides, plan
  return None, None


# ----------------------------------------------------------------------------
# Text.


def _gib(x: float) -> str:
  return f"{x / GIB:.2f}"


def _size(x: float) -> str:
  return f"{x / 2**20:.1f} MiB" if x < GIB / 10 else f"{x / GIB:.2f} GiB"


def format_plan(plan: Plan, title: str = "") -> str:
  topo = plan.topology
  flexi = ", ".join(f"{k}={v}" for k, v in plan.flexi)
  settings = " ".join(f"{k}={v}" for k, v in plan.model_settings.items()) or "(none)"
  settings += "".join(f"; teacher {name} " + " ".join(f"{k}={v}" for k, v in fields.items())
                      for name, fields in plan.teacher_settings.items() if fields)
  lines = [
      f"plan {title + ' ' if title else ''}on {topo.describe()}",
      f"  mesh data={plan.mesh['data']} fsdp={plan.mesh['fsdp']} ({plan.param_sharding}); "
      f"batch {plan.batch_size} = {plan.per_device_batch} per device in {plan.accum_steps} "
      f"microbatch{'es' * (plan.accum_steps != 1)} of {plan.per_device_batch // plan.accum_steps}"
      f"; costliest step {flexi}; model {settings}",
      "  per device: " + ", ".join(f"{k} {_size(v)}" for k, v in plan.memory.items()),
      f"  total {_gib(plan.total)} GiB of {_gib(topo.chip.hbm_bytes)} GiB: "
      + (f"fits (at most {MARGIN:.0%} used)" if plan.fits else
         f"does not fit (needs at most {MARGIN:.0%}: {_gib(MARGIN * topo.chip.hbm_bytes)} GiB)"),
      f"  the student's residuals for the backward (JAX's, by dtype_mm and remat_policy, which "
      f"XLA:CPU's activations above do not shrink with): {_size(plan.residuals)} per microbatch",
      f"  FLOPs per step {plan.flops_per_step / 1e12:.1f} TFLOP (all devices); predicted step "
      f"{plan.step_seconds:.3f} s at {plan.mfu:.0%} MFU of {topo.chip.peak_flops / 1e12:.1f} "
      f"TFLOP/s per device",
  ]
  return "\n".join(lines)


def flags(overrides: Mapping[str, Any]) -> str:
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def run_plan(config, topology: Optional[str], mfu: float = MFU, title: str = "") -> str:
  """The text `train --plan` prints; raises UserError (one line) when nothing fits."""
  name = topology or config.get("topology")
  if not name:
    raise UserError("--plan needs a topology: pass --topology (e.g. "
                    f"{', '.join(TOPOLOGY_EXAMPLES[:4])}) or set config.topology")
  topo = parse_topology(name)
  plan = make_plan(config, topo, mfu)
  text = format_plan(plan, title)
  if plan.fits:
    return text
  overrides, better = recommend(config, topo, mfu)
  if better is None:
    raise UserError(f"{title or 'the config'} cannot fit {topo.name} ({topo.chip.hbm_bytes / GIB:.0f} GiB "
                    f"per device): {_gib(plan.total)} GiB per device as configured, and no "
                    f"tried setting of microbatches, fsdp, dtype_mm, remat_policy fits")
  return "\n".join([text, f"recommended: {flags(overrides)}", format_plan(better, title)])
