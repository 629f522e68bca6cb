"""The training loop: one function owns a run's resources and steps it from the resume point to the end.

Supervised and distillation differ only by their loss. Everything that varies per step
(patch size, mixup, dropout, data order) is a pure function of (config.seed, step), so a
resumed run is bit-identical to an uninterrupted one, and the same on 1 device, N devices,
or N processes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flexivit_jax import data, paths
from flexivit_jax.checkpoints import manager, sources, step_dirs, workdir_lock
from flexivit_jax.errors import Preempted, TrainingDivergedError, UserError
from flexivit_jax.models.vit import FlexiViT, resolve_patch
from flexivit_jax.outputs import console, eval_names, run_config, runlog, tables
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import optim
from flexivit_jax.training.compiled_steps import (CompiledSteps, abstract_of,
                                                  make_loss_fn,
                                                  make_step_cache,
                                                  make_train_step)
from flexivit_jax.training.evals import (build_evaluators, evals_due, evaluate,
                                         print_final_table)
from flexivit_jax.training.flexi import FlexiSampler
from flexivit_jax.training.initial_state import (Teacher, build_model,
                                                 build_teachers, flexi_key,
                                                 init_state, make_init_fn)
from flexivit_jax.training.preemption import Preemption
from flexivit_jax.training.sharding import (batch_sharding, check_batch_size,
                                            make_mesh, shardings_of, to_global)

log = logging.getLogger("flexivit_jax")
FlexiKey = eval_names.FlexiKey


# ----------------------------------------------------------------------------
# Data.


def total_steps(config) -> int:
  if config.total_steps is not None:
    return int(config.total_steps)
  num, _ = data.dataset_info(config_lib.data_config(config, config.input.data))
  return max(1, int(round(config.total_epochs * num / config.input.batch_size)))


def check_flexi_fits(values, image_hw: Tuple[int, int]) -> None:
  """Every flexi value must give a valid patch for the input images."""
  for v in values:
    resolve_patch(image_hw, v.get("seqhw"), v.get("patch_size"))


def resume_step(workdir: str) -> int:
  """The step a run in `workdir` continues from (0: a fresh run)."""
  steps = step_dirs.complete_steps(workdir)
  return steps[-1] if steps else 0


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
      config_lib.data_config(config, config.input.data), config.input.pp, config.input.batch_size,
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
  model_init = sources.load_params(config.model_init) if config.model_init else None
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
      f"training diverged at step {done} ({eval_names.flexi_label(flexi)}): train/loss="
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
    if jax.process_index() == 0:
      run_config.write(config, workdir)
    run = prepare_run(config, workdir)
    run.name = name
    try:
      return _train(run)
    finally:
      run.train_iter.close()


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
    shardings = shardings_of(abstract, run.mesh, config.param_sharding)
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
  progress = console.Progress(steps, run.start_step, mode=config.progress,
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
    evaluators = build_evaluators(config, run.model, mesh, cache)
    bsh = batch_sharding(mesh)
    # Shapes and shardings only: compiling later must not touch donated buffers.
    abstract = jax.tree.map(abstract_of,
                            (state, teacher_params, to_global(first, bsh)))
    if config.aot_compile:
      for v in run.sampler.all_values():
        train_steps.compile(flexi_key(v), *abstract)
    compute = ComputeMeter(lambda f: train_steps.gflops(f, *abstract), run.sampler,
                           run.start_step)
    writer = runlog.MetricWriter(workdir, enabled=is_main, resume_step=run.start_step)
    last, final = _loop(run, ckpts, state, teacher_params, train_steps, evaluators, compute,
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
  fields = {k: eval_names.flexi_label(((k, v),)).partition("=")[2] for k, v in flexi}
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
          train_steps: CompiledSteps, evaluators, compute: "ComputeMeter", writer, progress
          ) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """Steps from the resume point to the end: (last metrics and state, final eval results)."""
  config, steps, mesh = run.config, run.total_steps, run.mesh
  bsh = batch_sharding(mesh)
  throughput = console.Throughput(config.input.batch_size, run.start_step)
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
        results = evaluate({n: evaluators[n] for n in due}, state["params"], run.eval_flexis)
        writer.write(done, {**results, "compute/gflops": compute.total_gflops()})
        last.update(results)
        progress.line(f"eval step {done}/{steps}  "
                      + tables.format_eval_line(results, local["image"].shape[1]))
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
