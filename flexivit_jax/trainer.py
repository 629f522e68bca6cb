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
import logging
import os
import re
import signal
import threading
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flexivit_jax import checkpoint, data, losses, metrics, optim, tree
from flexivit_jax.flexi import FlexiSampler
from flexivit_jax import model as model_lib
from flexivit_jax.model import FlexiViT, resolve_patch
from flexivit_jax.errors import Preempted, TrainingDivergedError, UserError

log = logging.getLogger("flexivit_jax")
CKPT_PATTERN = "checkpoint_{step:09d}.npz"
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


def build_teachers(distill_cfg) -> Tuple[Tuple[Teacher, ...], Dict[str, Any]]:
  teachers, params = [], {}
  for name, t in sorted(distill_cfg.teachers.items()):
    call = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in dict(t.get("call", {})).items()))
    teachers.append(Teacher(name, build_model(t["model"]), t.get("input_key", "image"), call))
    params[name] = checkpoint.load_params(t["init"])
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
  params, _ = checkpoint.load_pretrained(
      jax.tree.map(np.asarray, init_params), config.model_init if loaded is None else loaded,
      dont_load=tuple(config.model_load.get("dont_load", ())), log=log.info)
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
      return sum(kls) / len(kls)
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


def make_eval_step(model: FlexiViT) -> Callable:
  """eval_step(params, batch, flexi) -> (correct, count): sums over real examples."""

  def eval_step(params, batch, flexi: FlexiKey):
    logits, _ = model.apply({"params": params}, batch["image"], **dict(flexi))
    top1 = jnp.argmax(logits, axis=-1)
    hit = jnp.take_along_axis(batch["labels"], top1[:, None], axis=-1)[:, 0] > 0
    mask = batch[data.MASK_KEY].astype(jnp.float32)
    return jnp.sum(hit * mask), jnp.sum(mask)

  return eval_step


class CompiledSteps:
  """One compiled executable per flexi value (its static argument), cached."""

  def __init__(self, fn: Callable, shardings, donate: bool):
    self._jit = jax.jit(fn, static_argnames=("flexi",), out_shardings=shardings,
                        donate_argnums=(0,) if donate else ())
    self._compiled: Dict[FlexiKey, Any] = {}

  def compile(self, flexi: FlexiKey, *args):
    if flexi not in self._compiled:
      self._compiled[flexi] = self._jit.lower(*args, flexi=flexi).compile()
    return self._compiled[flexi]

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
# Checkpoints: flat npz, big_vision-style keys (params/..., opt/..., step).


def _state_keys(state) -> list[str]:
  """Checkpoint keys of a train state's leaves: params/..., opt/..., step."""
  keys = []
  for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys.append(re.sub(r"^opt_state", "opt", tree.path_name(path)))
  return keys


def _flatten_state(state) -> Dict[str, np.ndarray]:
  gather = (lambda x: multihost_utils.process_allgather(x, tiled=True)) \
      if jax.process_count() > 1 else (lambda x: x)
  return {k: np.asarray(gather(leaf))
          for k, leaf in zip(_state_keys(state), jax.tree.leaves(state))}


def save_checkpoint(workdir: str, state, keep: int) -> Optional[str]:
  """Writes checkpoint_<step>.npz atomically (process 0) and keeps the last `keep`."""
  flat = _flatten_state(state)
  step = int(flat["step"])
  path = os.path.join(workdir, CKPT_PATTERN.format(step=step))
  if jax.process_index() == 0:
    checkpoint.save_flat(path, flat)
    old = sorted(f for f in os.listdir(workdir) if checkpoint.CHECKPOINT_RE.match(f))
    for name in old[:-keep]:
      os.remove(os.path.join(workdir, name))
  multihost_utils.sync_global_devices(f"checkpoint {step}")
  return path


def restore_checkpoint(path: str, shardings, abstract) -> Any:
  """Reads a train-state npz into arrays laid out with `shardings`."""
  flat = checkpoint.load_flat(path)
  names = _state_keys(abstract)
  missing = [n for n in names if n not in flat]
  if missing:
    raise UserError(f"checkpoint {path} does not match this config's train state; "
                     f"missing {missing[:5]} ({len(missing)} in all)")
  leaves = []
  for name, a, sh in zip(names, jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    value = np.asarray(flat[name])
    if value.shape != a.shape:
      raise UserError(f"checkpoint {path}: {name} has shape {value.shape}, the train state "
                       f"expects {a.shape}")
    value = value.astype(a.dtype)
    leaves.append(jax.make_array_from_callback(a.shape, sh, lambda idx, v=value: v[idx]))
  return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


class Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (all processes agree)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def should_stop(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.asarray(int(self.requested)))
    return bool(np.any(flags))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------
# Evaluation.


def evaluate(config, evaluators, eval_steps: CompiledSteps, params, flexis, mesh
             ) -> Dict[str, float]:
  """prec@1 of every evaluator at every flexi value; one data pass per evaluator."""
  results = {}
  for name, ev in evaluators.items():
    hits = {f: 0.0 for f in flexis}
    count = 0.0
    bs = ev.get("batch_size", config.input.batch_size)
    for local in data.eval_iterator(_data_cfg(config, ev["data"]), ev["pp"], bs):
      batch = to_global({k: local[k] for k in ("image", "labels", data.MASK_KEY)},
                        batch_sharding(mesh))
      for f in flexis:
        h, c = eval_steps(f, params, batch)
        hits[f] += float(h)
      count += float(c)
    for f in flexis:
      results[metrics.eval_metric_name(name, f)] = hits[f] / max(count, 1.0)
  return results


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
  latest_checkpoint: Optional[str]
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


def prepare_run(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Builds the pieces of a run and checks them against the data, compiling nothing."""
  os.makedirs(workdir, exist_ok=True)
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compile_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  mesh = make_mesh(config.mesh)
  check_batch_size(config.input.batch_size, mesh, "input.batch_size")
  for name, ev in config.evals.items():
    check_batch_size(ev.get("batch_size", config.input.batch_size), mesh,
                     f"evals.{name}.batch_size")
  steps = total_steps(config)
  teachers, teacher_params = build_teachers(config.distill)
  model_init = checkpoint.load_params(config.model_init) if config.model_init else None
  sampler = FlexiSampler(config.flexi, seed=config.seed)
  eval_sampler = FlexiSampler(config.eval_flexi, seed=0) if config.eval_flexi else sampler
  tx, sched_fn = optim.make_optimizer(config, steps)
  latest = checkpoint.latest_checkpoint(workdir)
  start_step = (int(checkpoint.CHECKPOINT_RE.match(os.path.basename(latest)).group(1))
                if latest else 0)
  train_iter = data.train_iterator(
      _data_cfg(config, config.input.data), config.input.pp, config.input.batch_size,
      seed=config.seed, start_step=start_step, num_threads=config.input.num_threads,
      prefetch=config.input.prefetch)
  run = Run(config, workdir, mesh, steps, start_step, latest, build_model(config.model),
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
    check_flexi_fits([dict(t.call)], first[t.input_key].shape[1:3])


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


def evals_due(config, done: int, steps: int) -> Dict[str, Any]:
  """The evaluators to run after step `done`: each every `log_steps` (default log_eval_steps)."""
  return {name: ev for name, ev in config.evals.items()
          if done == steps or done % (ev.get("log_steps") or config.log_eval_steps) == 0}


def log_train_step(run: Run, done: int, step_metrics, flexi: FlexiKey, throughput) -> dict:
  """Fetches the step's metrics (a host sync)."""
  loss = float(step_metrics["train/loss"])
  return {"train/loss": loss, "grad_norm": float(step_metrics["grad_norm"]),
          **dict(flexi), "lr": float(run.lr_fn(done - 1)), "img_per_s": throughput(done)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains (and resumes) the run in `workdir`; returns the last metrics and state."""
  run = prepare_run(config, workdir)
  try:
    return _train(run)
  finally:
    run.train_iter.close()


def _train(run: Run) -> Dict[str, Any]:
  """The loop of `train_and_evaluate` over a prepared run."""
  config, workdir = run.config, run.workdir
  mesh, steps, first = run.mesh, run.total_steps, run.first_batch
  state, shardings = init_state(config, run.model, run.tx, mesh, first["image"].shape[1:],
                                flexi_key(run.sampler.all_values()[0]), run.model_init)
  if run.latest_checkpoint:
    state = restore_checkpoint(run.latest_checkpoint, shardings, jax.eval_shape(lambda s: s, state))
    log.info("resumed from %s at step %d", run.latest_checkpoint, run.start_step)
  repl = NamedSharding(mesh, P())
  teacher_params = jax.device_put(run.teacher_params, repl)
  train_steps = CompiledSteps(
      make_train_step(run.model, run.tx, make_loss_fn(config), run.teachers, seed=config.seed,
                      mixup_p=float(config.mixup.get("p", 0.0) or 0.0)),
      (shardings, repl), donate=True)
  eval_steps = CompiledSteps(make_eval_step(run.model), (repl, repl), donate=False)
  bsh = batch_sharding(mesh)
  if config.aot_compile:
    example = to_global(first, bsh)
    for v in run.sampler.all_values():
      train_steps.compile(flexi_key(v), state, teacher_params, example)

  is_main = jax.process_index() == 0
  writer = metrics.MetricWriter(workdir, enabled=is_main, resume_step=run.start_step)
  progress = metrics.Progress(steps, run.start_step, config.input.batch_size,
                              enabled=is_main and metrics.show_progress_bar(config.progress_bar))
  try:
    last, final = _loop(run, state, teacher_params, train_steps, eval_steps, writer, progress)
  finally:
    progress.close()
    writer.close()
  if final:  # After the bar is closed, so the table never lands inside its line.
    print_final_table(workdir, final, first["image"].shape[1], progress)
  return last


def _loop(run: Run, state, teacher_params, train_steps: CompiledSteps,
          eval_steps: CompiledSteps, writer, progress) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """Steps from the resume point to the end: (last metrics and state, final eval results)."""
  config, steps, mesh = run.config, run.total_steps, run.mesh
  bsh = batch_sharding(mesh)
  throughput = metrics.Throughput(config.input.batch_size, run.start_step)
  last: Dict[str, Any] = {}
  final: Dict[str, float] = {}
  last_saved = run.start_step or None
  local = run.first_batch
  with Preemption() as preemption:
    for step in range(run.start_step, steps):
      flexi = flexi_key(run.sampler(step))
      state, step_metrics = train_steps(flexi, state, teacher_params, to_global(local, bsh))
      done = step + 1
      if config.check_nan:  # Before anything is written for this step.
        check_finite(done, step_metrics, flexi, last_saved)
      if done % config.log_training_steps == 0 or done == steps:
        row = log_train_step(run, done, step_metrics, flexi, throughput)
        writer.write(done, row)
        last.update(row)
        progress.update(1, loss=f"{row['train/loss']:.4f}", **{k: str(v) for k, v in flexi})
      else:
        progress.update(1)
      due = evals_due(config, done, steps)
      if due:
        results = evaluate(config, due, eval_steps, state["params"], run.eval_flexis, mesh)
        writer.write(done, results)
        last.update(results)
        final = results if done == steps else final
      stop = preemption.should_stop()
      if done % config.ckpt_steps == 0 or done == steps or stop:
        save_checkpoint(run.workdir, state, config.keep_ckpt)
        last_saved = done
      if stop:
        raise Preempted(done)
      if done < steps:
        local = next(run.train_iter)
  return {**last, "step": steps, "state": state}, final
