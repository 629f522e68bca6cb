"""One trainer for FlexiViT: supervised and distillation differ only by their loss.

A library of small functions composed by `train_and_evaluate`:
config -> mesh and shardings -> abstract state (eval_shape) -> jitted init ->
per-flexi-value compiled train steps -> loop with logging, evals, checkpoints.
Everything that varies per step (patch size, mixup, dropout, data order) is a
pure function of (config.seed, step), so a resumed run is bit-identical to an
uninterrupted one, and the same on 1 device, N devices, or N processes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import flax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flexivit_jax import data
from flexivit_jax.checkpoints import npz
from flexivit_jax.training import losses
from flexivit_jax.outputs import metrics
from flexivit_jax.training import optim
from flexivit_jax.models import resize
from flexivit_jax.checkpoints import step_dirs
from flexivit_jax.training import step_cache
from flexivit_jax import paths
from flexivit_jax.checkpoints import manager
from flexivit_jax.checkpoints import workdir_lock
from flexivit_jax.evaluators import classification as eval_lib
from flexivit_jax.training.flexi import FlexiSampler
from flexivit_jax.models import vit as model_lib
from flexivit_jax.models.vit import FlexiViT, resolve_patch
from flexivit_jax.errors import Preempted, TrainingDivergedError, UserError

log = logging.getLogger("flexivit_jax")
FlexiKey = metrics.FlexiKey


# ----------------------------------------------------------------------------
# Mesh and shardings.


def make_mesh(mesh_cfg: Mapping[str, int], devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices; -1 means 'the rest'."""
  devices = jax.devices() if devices is None else devices
  sizes = {"data": mesh_cfg.get("data", -1), "fsdp": mesh_cfg.get("fsdp", 1)}
  known = int(np.prod([s for s in sizes.values() if s != -1]))
  for axis, size in sizes.items():
    if size == -1:
      sizes[axis] = len(devices) // known
  if sizes["data"] * sizes["fsdp"] != len(devices):
    raise UserError(f"mesh {dict(mesh_cfg)} does not fit the {len(devices)} devices; "
                     "its axis sizes must multiply to the device count (use -1 for one axis)")
  return Mesh(np.asarray(devices).reshape(sizes["data"], sizes["fsdp"]), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batch dimension split over every device."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def state_sharding(mesh: Mesh, shape: Tuple[int, ...], mode: str) -> NamedSharding:
  """Replicated, or (fsdp) split on the largest axis divisible by the fsdp size."""
  n = mesh.shape["fsdp"]
  if mode == "fsdp" and n > 1 and len(shape) > 0:
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
      if shape[axis] % n == 0 and shape[axis] >= n:
        spec = [None] * len(shape)
        spec[axis] = "fsdp"
        return NamedSharding(mesh, P(*spec))
  return NamedSharding(mesh, P())


# ----------------------------------------------------------------------------
# Model, teachers and state.


def build_model(model_cfg: Mapping[str, Any]) -> FlexiViT:
  return model_lib.from_config(model_cfg)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen model run at its fixed size on its own input key."""
  name: str
  model: FlexiViT
  input_key: str
  call: Tuple[Tuple[str, Any], ...]


def load_teacher_params(model: FlexiViT, path: str) -> dict:
  """A teacher checkpoint adapted to its model (posemb cls row / grid, like model_init)."""
  hp = model.hparams()
  grid = resize.to_hw(model.posemb_size, "posemb_size")
  image = jnp.zeros((1, grid[0] * hp["patch_size"][0], grid[1] * hp["patch_size"][1], 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image)["params"])
  init = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
  params, _ = npz.load_pretrained(init, path, log=log.info)
  return params


def build_teachers(distill_cfg) -> Tuple[Tuple[Teacher, ...], Dict[str, Any]]:
  teachers, params = [], {}
  for name, t in sorted(distill_cfg.teachers.items()):
    call = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in dict(t.get("call", {})).items()))
    teachers.append(Teacher(name, build_model(t["model"]), t.get("input_key", "image"), call))
    params[name] = load_teacher_params(teachers[-1].model, t["init"])
  return tuple(teachers), params


def flexi_key(values: Mapping[str, Any]) -> FlexiKey:
  return tuple(sorted(values.items()))


def state_from_params(tx, params) -> dict:
  """The train state at step 0: params, fresh optimizer state, step."""
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_init_fn(model: FlexiViT, tx, image_shape, flexi: FlexiKey,
                 init_head_bias: Optional[float]) -> Callable:
  def init(rng):
    params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), **dict(flexi))["params"]
    if init_head_bias is not None:
      params["head"]["bias"] = jnp.full_like(params["head"]["bias"], init_head_bias)
    return state_from_params(tx, params)
  return init


def _shardings_of(abstract, mesh, mode):
  return jax.tree.map(lambda a: state_sharding(mesh, a.shape, mode), abstract)


def init_state(config, model, tx, mesh, image_shape, flexi: FlexiKey, loaded=None):
  """eval_shape -> shardings -> jit(init); or starts from `config.model_init`.

  `loaded`: the params of `config.model_init` when already read (`prepare_run`
  reads them before anything compiles, so a bad file fails early).
  """
  init_fn = make_init_fn(model, tx, image_shape, flexi, config.init_head_bias)
  rng = jax.random.key(config.seed)
  if not config.model_init:
    shardings = _shardings_of(jax.eval_shape(init_fn, rng), mesh, config.param_sharding)
    return jax.jit(init_fn, out_shardings=shardings)(rng), shardings
  init_params = jax.jit(lambda r: init_fn(r)["params"])(rng)
  params, _ = npz.load_pretrained(
      jax.tree.map(np.asarray, init_params), config.model_init if loaded is None else loaded,
      dont_load=tuple(config.model_load.get("dont_load", ())), log=log.info,
      kernel=config.model_load.get("kernel", "keep"))
  # The loaded kernel may keep another size than init's: shard by the loaded shapes.
  from_params = lambda p: state_from_params(tx, p)
  shardings = _shardings_of(jax.eval_shape(from_params, params), mesh, config.param_sharding)
  return jax.jit(from_params, out_shardings=shardings)(params), shardings


# ----------------------------------------------------------------------------
# Loss functions: the only difference between supervised and distillation.


def make_loss_fn(config) -> Callable:
  """loss(student_logits, batch, teacher_logits) -> scalar."""
  if config.distill.teachers:
    t = config.distill.temperature

    def distill_loss(logits, batch, teacher_logits):
      del batch
      kls = [losses.distill_kl(logits, tl, temperature=t) for tl in teacher_logits.values()]
      total = sum(kls)
      return total / len(kls) if config.distill.combine_teachers == "mean" else total
    return distill_loss

  base = losses.get_loss(config.loss)

  def supervised_loss(logits, batch, teacher_logits):
    del teacher_logits
    return base(logits, batch["labels"])
  return supervised_loss


def make_train_step(model: FlexiViT, tx, loss_fn: Callable, teachers: Tuple[Teacher, ...],
                    *, seed: int, mixup_p: float) -> Callable:
  """train_step(state, teacher_params, batch, flexi) -> (state, metrics).

  metrics["finite"] says whether the loss and the gradient norm are finite: one
  scalar the loop fetches every step to stop at the first divergence.
  """

  def train_step(state, teacher_params, batch, flexi: FlexiKey):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    rng_mix, rng_drop = jax.random.split(rng)
    mix_keys = ["image", "labels"] + sorted({t.input_key for t in teachers} - {"image"})
    if mixup_p:
      _, *mixed, _ = losses.mixup(rng_mix, *[batch[k] for k in mix_keys], p=mixup_p)
      batch = {**batch, **dict(zip(mix_keys, mixed))}
    teacher_logits = {
        t.name: jax.lax.stop_gradient(
            t.model.apply({"params": teacher_params[t.name]}, batch[t.input_key],
                          **dict(t.call))[0])
        for t in teachers}

    def loss(params):
      logits, _ = model.apply({"params": params}, batch["image"], **dict(flexi), train=True,
                              rngs={"dropout": rng_drop})
      return loss_fn(logits, batch, teacher_logits)

    value, grads = jax.value_and_grad(loss)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
    out = {"params": params, "opt_state": opt_state, "step": step + 1}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    return out, {"train/loss": value, "grad_norm": grad_norm, "finite": finite}

  return train_step


def make_eval_step(model: FlexiViT, label_mapping=None) -> Callable:
  """eval_step(params, batch, flexi) -> (correct, count), as big_vision's evaluator.

  Examples weigh their label row's max (empty rows drop out); a hit counts the
  label value at the argmax. `label_mapping` maps the logits to the dataset's
  classes first (see flexivit_jax.evaluators.classification.map_logits).
  """

  def eval_step(params, batch, flexi: FlexiKey):
    logits, _ = model.apply({"params": params}, batch["image"], **dict(flexi))
    if label_mapping is not None:
      logits = eval_lib.map_logits(logits, label_mapping)
    return eval_lib.classification_counts(logits, batch["labels"], batch[data.MASK_KEY])

  return eval_step


def make_eval_steps(model: FlexiViT, evals: Mapping[str, Any], shardings,
                    cache: Optional[step_cache.StepCache] = None) -> Dict[str, "CompiledSteps"]:
  """One CompiledSteps per evaluator; those without a label map share one."""
  shared = CompiledSteps(make_eval_step(model), shardings, donate=False, cache=cache,
                         name="eval")
  out = {}
  for name, ev in evals.items():
    mapping = eval_lib.load_label_mapping(ev.get("label_mapping"), model.num_classes)
    if mapping is None:
      out[name] = shared
    else:  # The map is a constant of the traced step: its bytes name the cache entry.
      digest = hashlib.sha256(np.asarray(mapping).tobytes()).hexdigest()[:16]
      out[name] = CompiledSteps(make_eval_step(model, mapping), shardings, donate=False,
                                cache=cache, name=f"eval-{digest}")
    out[name].label_mapping = mapping
  return out


def make_step_cache(config) -> Optional[step_cache.StepCache]:
  """Traced steps under `compile_cache_dir/steps`, keyed by the config and this package."""
  if not config.compile_cache_dir:
    return None
  parts = [config.to_json_best_effort(sort_keys=True),
           step_cache.source_fingerprint(os.path.dirname(os.path.abspath(__file__))),
           flax.__version__, optax.__version__, np.__version__]
  return step_cache.StepCache(os.path.join(config.compile_cache_dir, "steps"),
                              hashlib.sha256("\n".join(parts).encode()).hexdigest())


def _abstract(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


class CompiledSteps:
  """One compiled executable per flexi value (its static argument), cached."""

  def __init__(self, fn: Callable, shardings, donate: bool, num_devices: int = 1,
               cache: Optional[step_cache.StepCache] = None, name: str = "step"):
    self._fn, self._shardings, self._donate = fn, shardings, (0,) if donate else ()
    self._jit = jax.jit(fn, static_argnames=("flexi",), out_shardings=shardings,
                        donate_argnums=self._donate)
    self._compiled: Dict[FlexiKey, Any] = {}
    self.label_mapping = None  # Set by make_eval_steps for label-mapped evals.
    self._num_devices = num_devices
    self._cache, self._name = cache, name

  def compile(self, flexi: FlexiKey, *args):
    """The executable for `flexi` (args may be ShapeDtypeStructs with shardings)."""
    if flexi not in self._compiled:
      if self._cache is None:
        self._compiled[flexi] = self._jit.lower(*args, flexi=flexi).compile()
      else:
        abstract = jax.tree.map(_abstract, args)
        self._compiled[flexi] = self._cache.compile(
            self._name, self._fn, flexi, abstract, out_shardings=self._shardings,
            donate_argnums=self._donate)
    return self._compiled[flexi]

  def num_compiled(self) -> int:
    return len(self._compiled)

  def gflops(self, flexi: FlexiKey, *args) -> float:
    """GFLOPs of one call on all devices, from XLA's cost analysis of the executable.

    The SPMD executable's analysis counts one device's share; times the devices.
    """
    cost = self.compile(flexi, *args).cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
      cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan"))) * self._num_devices / 1e9

  def __call__(self, flexi: FlexiKey, *args):
    return self.compile(flexi, *args)(*args)


# ----------------------------------------------------------------------------
# Data.


def _data_cfg(config, data_cfg) -> dict:
  out = dict(data_cfg)
  if config.input.data_dir and "data_dir" not in out:
    out["data_dir"] = config.input.data_dir
  return out


def total_steps(config) -> int:
  if config.total_steps is not None:
    return int(config.total_steps)
  num, _ = data.dataset_info(_data_cfg(config, config.input.data))
  return max(1, int(round(config.total_epochs * num / config.input.batch_size)))


def to_global(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict:
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size or batch_size % jax.process_count():
    raise UserError(f"{what}={batch_size} must be divisible by the {mesh.size} devices "
                     f"and {jax.process_count()} processes")


def check_flexi_fits(values, image_hw: Tuple[int, int]) -> None:
  """Every flexi value must give a valid patch for the input images."""
  for v in values:
    resolve_patch(image_hw, v.get("seqhw"), v.get("patch_size"))


# ----------------------------------------------------------------------------
# Preemption.


class Preemption:
  """SIGTERM (or a preemption notice) -> a stop all processes agree on, without a per-step
  collective.

  One process: a signal flag, read every step. Several processes: JAX's preemption
  sync point (the coordination service propagates the notice and picks a common step)
  when the preemption service runs; otherwise the flag is all-gathered only every
  `check_every` steps.
  """

  def __init__(self, check_every: int = 10):
    self.requested = False
    self.check_every = max(1, int(check_every))
    self._previous = None
    self._sync_point = jax.process_count() > 1 and _preemption_service_running()

  def __enter__(self):
    # With the service, its own SIGTERM handler must stay installed.
    if not self._sync_point and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested
    if self._sync_point:
      return multihost_utils.reached_preemption_sync_point(step)
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(int(self.requested)))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _preemption_service_running() -> bool:
  from jax._src import distributed  # The sync manager has no public accessor.
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


def resume_step(workdir: str) -> int:
  """The step a run in `workdir` continues from (0: a fresh run)."""
  steps = step_dirs.complete_steps(workdir)
  if not steps and npz.latest_checkpoint(workdir):
    raise UserError(f"workdir {workdir!r} holds npz train-state checkpoints of an older "
                    "version, which cannot be resumed; start a new workdir with "
                    f"--config.model_init={workdir} to begin from their params")
  return steps[-1] if steps else 0


# ----------------------------------------------------------------------------
# Evaluation.


def pad_batch(local: Mapping[str, np.ndarray], multiple: int) -> Dict[str, np.ndarray]:
  """Appends all-zero examples (their `_mask` False) up to a multiple of `multiple`."""
  n = len(local[data.MASK_KEY])
  pad = -n % multiple
  if not pad:
    return dict(local)
  return {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
          for k, v in local.items()}


def evaluate(config, evaluators, eval_steps, params, flexis, mesh) -> Dict[str, float]:
  """prec@1 of every evaluator at every flexi value; one data pass per evaluator.

  `eval_steps`: one CompiledSteps for all, or make_eval_steps' dict (needed for
  evaluators with a label_mapping).
  An eval batch need not divide the device count: each process pads its slice
  with masked examples up to a multiple of its devices.
  """
  results = {}
  local_devices = mesh.size // jax.process_count()
  for name, ev in evaluators.items():
    steps = eval_steps[name] if isinstance(eval_steps, Mapping) else eval_steps
    if ev.get("label_mapping") is not None and steps.label_mapping is None:
      raise UserError(f"evals.{name} has a label_mapping: build its steps with make_eval_steps")
    hits = {f: 0.0 for f in flexis}
    count = 0.0
    bs = ev.get("batch_size", config.input.batch_size)
    for local in data.eval_data(_data_cfg(config, ev["data"]), ev["pp"], bs).iterate():
      if steps.label_mapping is not None and local["labels"].shape[-1] != len(steps.label_mapping):
        raise UserError(f"evals.{name}: label_mapping has {len(steps.label_mapping)} entries "
                        f"but its pp makes labels with {local['labels'].shape[-1]} classes")
      local = pad_batch({k: local[k] for k in ("image", "labels", data.MASK_KEY)},
                        local_devices)
      batch = to_global(local, batch_sharding(mesh))
      for f in flexis:
        h, c = steps(f, params, batch)
        hits[f] += float(h)
      count += float(c)
    for f in flexis:
      results[metrics.eval_metric_name(name, f)] = hits[f] / max(count, 1.0)
  return results


def evals_due(config, done: int, steps: int) -> Dict[str, Any]:
  """The evaluators to run after step `done`: each every `log_steps` (or
  `log_percent` of the run; default `config.log_eval_steps`), all at the end."""
  def every(ev):
    if ev.get("log_percent"):
      return max(1, int(round(ev["log_percent"] * steps)))
    return ev.get("log_steps") or config.log_eval_steps
  return {name: ev for name, ev in config.evals.items()
          if done == steps or done % every(ev) == 0}


def print_final_table(workdir: str, results: Mapping[str, float], image_size: int,
                      progress) -> None:
  curves = metrics.final_eval_curves([results])
  if not curves:
    return
  progress.write("\nAccuracy per patch size (image %dpx):\n%s" % (
      image_size, metrics.format_table(curves, image_size)))
  if jax.process_index() == 0:
    for name, curve in curves.items():
      path = metrics.plot_accuracy({name: curve}, os.path.join(workdir, f"eval_{name}.png"),
                                   image_size=image_size, title=f"{name}: prec@1 per patch size")
      progress.write(f"plot: {path}")


# ----------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class Run:
  """Everything a training run is made of, built before anything compiles."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  total_steps: int
  start_step: int
  model: FlexiViT
  teachers: Tuple[Teacher, ...]
  teacher_params: Dict[str, Any]
  sampler: FlexiSampler
  eval_flexis: list
  tx: Any
  lr_fn: Callable
  train_iter: Any
  first_batch: Dict[str, np.ndarray]
  model_init: Optional[Dict[str, Any]] = None  # The params of config.model_init.
  name: str = ""  # What started it (the config file), for the start line.


def make_train_iterator(config, start_step: int):
  """The training input pipeline, positioned at `start_step`."""
  return data.train_iterator(
      _data_cfg(config, config.input.data), config.input.pp, config.input.batch_size,
      seed=config.seed, start_step=start_step, num_threads=config.input.num_threads,
      prefetch=config.input.prefetch)


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Builds the pieces of a run and checks them against the data, compiling nothing."""
  os.makedirs(workdir, exist_ok=True)
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compile_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  mesh = make_mesh(config.mesh)
  check_batch_size(config.input.batch_size, mesh, "input.batch_size")
  for name, ev in config.evals.items():  # Eval batches are padded to the devices.
    bs = ev.get("batch_size", config.input.batch_size)
    if bs % jax.process_count():
      raise UserError(f"evals.{name}.batch_size={bs} must be divisible by the "
                       f"{jax.process_count()} processes")
  steps = total_steps(config)
  teachers, teacher_params = build_teachers(config.distill)
  model_init = npz.load_params(config.model_init) if config.model_init else None
  sampler = FlexiSampler(config.flexi, seed=config.seed, total_steps=steps)
  eval_sampler = (FlexiSampler(config.eval_flexi, seed=0, total_steps=steps)
                  if config.eval_flexi else sampler)
  tx, sched_fn = optim.make_optimizer(config, steps)
  start_step = resume_step(workdir)
  train_iter = make_train_iterator(config, start_step)
  run = Run(config, workdir, mesh, steps, start_step, build_model(config.model),
            teachers, teacher_params, sampler,
            [flexi_key(v) for v in eval_sampler.all_values()], tx,
            optim.make_lr_fn(config.lr, sched_fn), train_iter, next(train_iter), model_init)
  try:
    check_inputs(run)
  except ValueError:
    train_iter.close()
    raise
  return run


def check_inputs(run: Run) -> None:
  """Every flexi value and teacher must fit the images the pipeline produces."""
  first = run.first_batch
  image_hw = first["image"].shape[1:3]
  check_flexi_fits(run.sampler.all_values(), image_hw)
  check_flexi_fits([dict(f) for f in run.eval_flexis], image_hw)
  num_classes = run.model.num_classes
  if "labels" in first and num_classes and first["labels"].shape[-1] != num_classes:
    raise UserError(f"model.num_classes={num_classes} but input.pp makes labels with "
                     f"{first['labels'].shape[-1]} classes; make them equal")
  for t in run.teachers:
    if t.input_key not in first:
      raise UserError(f"teacher {t.name!r} reads batch key {t.input_key!r}, which input.pp "
                       f"does not produce (keys: {sorted(first)})")
    # Without call arguments a teacher runs at its stored patch size.
    call = dict(t.call) or {"patch_size": t.model.hparams()["patch_size"]}
    check_flexi_fits([call], first[t.input_key].shape[1:3])


def check_finite(done: int, step_metrics, flexi: FlexiKey, last_saved: Optional[int]) -> None:
  """Stops at the first step whose loss or gradient is not finite (fetches one bool)."""
  if bool(step_metrics["finite"]):
    return
  resume = f"step {last_saved}" if last_saved else "the start (no checkpoint yet)"
  raise TrainingDivergedError(
      f"training diverged at step {done} ({metrics.flexi_label(flexi)}): train/loss="
      f"{float(step_metrics['train/loss'])}, grad_norm={float(step_metrics['grad_norm'])}; "
      f"nothing was written for this step, a restart resumes from {resume}; lower config.lr "
      "or raise schedule.warmup_steps", step=done)


def log_train_step(run: Run, done: int, step_metrics, flexi: FlexiKey, throughput) -> dict:
  """Fetches the step's metrics (a host sync)."""
  loss = float(step_metrics["train/loss"])
  return {"train/loss": loss, "grad_norm": float(step_metrics["grad_norm"]),
          **dict(flexi), "lr": float(run.lr_fn(done - 1)), "img_per_s": throughput(done)}


class ComputeMeter:
  """Cumulative training GFLOPs: steps taken per flexi value times that step's cost.

  Counts are integers and the sum runs in a fixed order, so a resumed run (whose
  earlier steps are recounted from the sampler) reports exactly the same numbers.
  """

  def __init__(self, gflops_of: Callable[[FlexiKey], float], sampler: FlexiSampler,
               start_step: int):
    self._gflops_of = gflops_of
    self._counts: Dict[FlexiKey, int] = {}
    for step in range(start_step):
      self.add(flexi_key(sampler(step)))

  def add(self, flexi: FlexiKey) -> None:
    self._counts[flexi] = self._counts.get(flexi, 0) + 1

  def total_gflops(self) -> float:
    return float(sum(self._counts[f] * self._gflops_of(f) for f in sorted(self._counts)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, name: str = ""
                       ) -> Dict[str, Any]:
  """Trains (and resumes) the run in `workdir`; returns the last metrics and state.

  `workdir` may be relative, `~/...` or a URL: it is normalised once, here. The
  run holds the workdir's lock (`workdir_lock`) before it writes anything, so a
  second run refuses instead of overwriting this one's config.json or checkpoints.
  `name` (e.g. the config file) goes on the first progress line.
  """
  workdir = paths.normalize(workdir)
  with workdir_lock.hold(workdir):
    save_config(config, workdir)
    run = prepare_run(config, workdir)
    run.name = name
    try:
      return _train(run)
    finally:
      run.train_iter.close()


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`<workdir>/config.json` (process 0), which evaluate and compare read; atomic."""
  if jax.process_index() != 0:
    return
  import tensorflow as tf  # gfile writes local paths and URLs alike.
  tf.io.gfile.makedirs(workdir)
  path = workdir + "/" + step_dirs.CONFIG_JSON
  with tf.io.gfile.GFile(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def _restart_data(run: Run, step: int) -> None:
  """Points the input pipeline at `step` (the resume step moved back past a corrupt one)."""
  run.train_iter.close()
  config = run.config
  run.train_iter = make_train_iterator(config, step)
  run.start_step, run.first_batch = step, next(run.train_iter)


def start_state(run: Run, ckpts: manager.StateCheckpoints):
  """The state at `run.start_step`: fresh, or the newest readable checkpoint on this mesh."""
  config, image_shape = run.config, run.first_batch["image"].shape[1:]
  flexi = flexi_key(run.sampler.all_values()[0])
  if run.start_step and not config.model_init:  # Nothing to materialise before restoring.
    init_fn = make_init_fn(run.model, run.tx, image_shape, flexi, config.init_head_bias)
    abstract = jax.eval_shape(init_fn, jax.random.key(config.seed))
    shardings = _shardings_of(abstract, run.mesh, config.param_sharding)
  else:
    state, shardings = init_state(config, run.model, run.tx, run.mesh, image_shape, flexi,
                                  run.model_init)
    if not run.start_step:
      return state, shardings
    abstract = jax.eval_shape(lambda s: s, state)
    del state
  restored = ckpts.restore(abstract, shardings)
  if restored is None:
    raise UserError(f"the checkpoints in {ckpts.directory} vanished while starting; "
                    "is another run using this workdir?")
  state, step = restored
  if step != run.start_step:
    _restart_data(run, step)
  log.info("resumed from %s at step %d", ckpts.directory, step)
  return state, shardings


def _train(run: Run) -> Dict[str, Any]:
  """The loop of `train_and_evaluate` over a prepared run."""
  config = run.config
  ckpts = manager.StateCheckpoints(run.workdir, config.keep_ckpt, config.keep_ckpt_every)
  try:
    return _train_from(run, ckpts, *start_state(run, ckpts))
  finally:
    ckpts.wait()  # A started save always completes, also on errors and preemption.
    ckpts.close()


def _train_from(run: Run, ckpts: manager.StateCheckpoints, state, shardings
                ) -> Dict[str, Any]:
  """Compiles the steps, then runs them from `run.start_step`, saving through `ckpts`."""
  config, workdir = run.config, run.workdir
  mesh, steps, first = run.mesh, run.total_steps, run.first_batch
  is_main = jax.process_index() == 0
  progress = metrics.Progress(steps, run.start_step, mode=config.progress,
                              batch_size=config.input.batch_size, main_process=is_main)
  writer = None
  try:  # The bar closes whatever happens, compiles included.
    progress.line(start_line(run))  # Before the compiles, which take a while.
    repl = NamedSharding(mesh, P())
    teacher_params = jax.device_put(run.teacher_params, repl)
    cache = make_step_cache(config)
    train_steps = CompiledSteps(
        make_train_step(run.model, run.tx, make_loss_fn(config), run.teachers, seed=config.seed,
                        mixup_p=float(config.mixup.get("p", 0.0) or 0.0)),
        (shardings, repl), donate=True, num_devices=mesh.size, cache=cache, name="train")
    eval_steps = make_eval_steps(run.model, config.evals, (repl, repl), cache)
    bsh = batch_sharding(mesh)
    # Shapes and shardings only: compiling later must not touch donated buffers.
    abstract = jax.tree.map(_abstract,
                            (state, teacher_params, to_global(first, bsh)))
    if config.aot_compile:
      for v in run.sampler.all_values():
        train_steps.compile(flexi_key(v), *abstract)
    compute = ComputeMeter(lambda f: train_steps.gflops(f, *abstract), run.sampler,
                           run.start_step)
    writer = metrics.MetricWriter(workdir, enabled=is_main, resume_step=run.start_step)
    last, final = _loop(run, ckpts, state, teacher_params, train_steps, eval_steps, compute,
                        writer, progress)
  finally:
    progress.close()
    if writer is not None:
      writer.close()
  if final:  # After the bar is closed, so the table never lands inside its line.
    print_final_table(workdir, final, first["image"].shape[1], progress)
  return last


def start_line(run: Run) -> str:
  """The first progress line: what runs, where, on what, for how long, from where."""
  n, procs = run.mesh.size, jax.process_count()
  platform = run.mesh.devices.flat[0].platform
  parts = ["start", f"config {run.name}" if run.name else "", f"workdir {run.workdir}",
           f"{n} {platform} device{'s' * (n != 1)} in {procs} process{'es' * (procs != 1)}",
           f"{run.total_steps} steps of batch {run.config.input.batch_size}",
           f"resumed from step {run.start_step}" if run.start_step else "from step 0"]
  return "  ".join(p for p in parts if p)


def step_line_fields(row: Mapping[str, Any], flexi: FlexiKey) -> Dict[str, str]:
  """The fields of a log step's progress line: flexi value, loss, grad_norm, lr."""
  fields = {k: metrics.flexi_label(((k, v),)).partition("=")[2] for k, v in flexi}
  fields.update(loss=f"{row['train/loss']:.4f}", grad_norm=f"{row['grad_norm']:.3g}",
                lr=f"{row['lr']:.2e}")
  return fields


def save_checkpoint(ckpts: manager.StateCheckpoints, step: int, state, progress,
                    previous: Optional[int]) -> int:
  """Starts saving `step` (asynchronous: the next steps run while it is written) and says
  so; a save starts only once the one before is committed, so `previous` is written."""
  ckpts.save(step, state)
  _say_written(ckpts, progress, previous)
  progress.line(f"checkpoint step {step} started (written in the background)")
  return step


def finish_checkpoint(ckpts: manager.StateCheckpoints, progress,
                      pending: Optional[int]) -> None:
  """Waits for the save started last, then says it is written."""
  ckpts.wait()
  _say_written(ckpts, progress, pending)


def _say_written(ckpts: manager.StateCheckpoints, progress, step: Optional[int]) -> None:
  """The progress line of a committed save (nothing when no save was started)."""
  if step is not None:
    progress.line(f"checkpoint step {step} written to {step_dirs.step_path(ckpts.workdir, step)}")


def _loop(run: Run, ckpts: manager.StateCheckpoints, state, teacher_params,
          train_steps: CompiledSteps, eval_steps, compute: "ComputeMeter", writer, progress
          ) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """Steps from the resume point to the end: (last metrics and state, final eval results)."""
  config, steps, mesh = run.config, run.total_steps, run.mesh
  bsh = batch_sharding(mesh)
  throughput = metrics.Throughput(config.input.batch_size, run.start_step)
  last: Dict[str, Any] = {}
  final: Dict[str, float] = {}
  last_saved = run.start_step or None
  pending = None  # The step whose save was started last in this run.
  local = run.first_batch
  with Preemption(config.preemption_check_steps) as preemption:
    for step in range(run.start_step, steps):
      flexi = flexi_key(run.sampler(step))
      state, step_metrics = train_steps(flexi, state, teacher_params, to_global(local, bsh))
      compute.add(flexi)
      done = step + 1
      if config.check_nan:  # Before anything is written for this step.
        check_finite(done, step_metrics, flexi, last_saved)
      if done % config.log_training_steps == 0 or done == steps:
        row = log_train_step(run, done, step_metrics, flexi, throughput)
        row["compute/gflops"] = compute.total_gflops()
        writer.write(done, row)
        last.update(row)
        progress.update(1, loss=f"{row['train/loss']:.4f}", **{k: str(v) for k, v in flexi})
        progress.log(step_line_fields(row, flexi), images_per_s=row["img_per_s"])
      else:
        progress.update(1)
      due = evals_due(config, done, steps)
      if due:
        results = evaluate(config, due, eval_steps, state["params"], run.eval_flexis, mesh)
        writer.write(done, {**results, "compute/gflops": compute.total_gflops()})
        last.update(results)
        progress.line(f"eval step {done}/{steps}  "
                      + metrics.format_eval_line(results, local["image"].shape[1]))
        final = results if done == steps else final
      stop = preemption.should_stop(done)
      if done % config.ckpt_steps == 0 or done == steps or stop:
        pending = save_checkpoint(ckpts, done, state, progress, pending)
        last_saved = done
      if stop:
        finish_checkpoint(ckpts, progress, pending)
        raise Preempted(done)
      if done < steps:
        local = next(run.train_iter)
  finish_checkpoint(ckpts, progress, pending)
  return {**last, "step": steps, "state": state}, final
