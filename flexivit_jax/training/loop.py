"""The training loop: one function owns a run's resources and steps it from the resume point to the end.

Supervised and distillation differ only by their loss. Everything that varies per step
(patch size, mixup, dropout, data order) is a pure function of (config.seed, step), so a
resumed run is bit-identical to an uninterrupted one, and the same on 1 device, N devices,
or N processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from flexivit_jax import data, paths
from flexivit_jax.checkpoints import manager, step_dirs, workdir_lock
from flexivit_jax.errors import Preempted, TrainingDivergedError
from flexivit_jax.outputs import console, eval_names, run_config, runlog, tables
from flexivit_jax.training import cadence
from flexivit_jax.training.compiled_steps import (CompiledSteps, abstract_of, make_loss_fn,
                                                  make_step_cache, make_train_step)
from flexivit_jax.training.evals import (build_evaluators, evaluate, forward_gflops,
                                          print_final_table)
from flexivit_jax.training.flexi import FlexiSampler
from flexivit_jax.training.initial_state import flexi_key
from flexivit_jax.training.preemption import Preemption
from flexivit_jax.training.run import (Run, check_inputs, make_train_iterator, prepare_run,
                                       start_line, start_state)
from flexivit_jax.training.sharding import batch_sharding, to_global

FlexiKey = eval_names.FlexiKey


def resume_step(workdir: str) -> int:
  """The step a run in `workdir` continues from (0: a fresh run)."""
  steps = step_dirs.complete_steps(workdir)
  return steps[-1] if steps else 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, name: str = ""
                       ) -> Dict[str, Any]:
  """Trains (and resumes) the run in `workdir`; returns the last metrics and state.

  `workdir` may be relative, `~/...` or a URL: it is normalised once, here. The
  run holds the workdir's lock (`workdir_lock`) before it writes anything, so a
  second run refuses instead of overwriting this one's config.json or checkpoints.
  `name` (e.g. the config file) goes on the first progress line.

  What the run holds is opened below in order and closed in reverse on every path
  (errors, divergence, preemption): the preemption handler, the metric writer, the
  progress display, the checkpoints (a started save always completes), the input
  pipeline, the lock.
  """
  workdir = paths.normalize(workdir)
  with contextlib.ExitStack() as stack:
    stack.enter_context(workdir_lock.hold(workdir))
    if jax.process_index() == 0:
      run_config.write(config, workdir)
    run = prepare_run(config, workdir, start_step=resume_step(workdir), name=name)
    inputs = stack.enter_context(make_train_iterator(config, run.start_step))
    first = next(inputs)
    check_inputs(run, first)
    ckpts = manager.StateCheckpoints(workdir, config.keep_ckpt, config.keep_ckpt_every)
    stack.callback(ckpts.close)
    stack.callback(ckpts.wait)  # Runs first: a started save always completes.
    state, shardings, step = start_state(run, ckpts, first["image"].shape[1:])
    if step != run.start_step:  # Newer checkpoints were unreadable: resume from an older one.
      inputs.close()
      run = dataclasses.replace(run, start_step=step)
      inputs = stack.enter_context(make_train_iterator(config, step))
      first = next(inputs)
    progress = stack.enter_context(contextlib.closing(console.Progress(
        run.total_steps, run.start_step, mode=config.progress,
        batch_size=config.input.batch_size, main_process=jax.process_index() == 0)))
    progress.line(start_line(run))  # Before the compiles, which take a while.
    steps = compile_steps(run, state, shardings, first)
    writer = stack.enter_context(contextlib.closing(runlog.MetricWriter(
        workdir, enabled=jax.process_index() == 0, resume_step=run.start_step)))
    preemption = stack.enter_context(Preemption(config.preemption_check_steps))
    last, final = run_steps(run, steps, state, inputs, first, ckpts=ckpts, writer=writer,
                            progress=progress, preemption=preemption)
    progress.close()  # Before the table, so it never lands inside the bar's line.
    if final:  # Still under the lock: its plots are files in the workdir.
      image_shape = first["image"].shape[1:]
      gflops = forward_gflops(run.model, state["params"], image_shape[0], image_shape[-1],
                              run.eval_flexis)
      print_final_table(workdir, final, image_shape[0], progress, gflops)
  return last


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


@dataclasses.dataclass(frozen=True)
class Steps:
  """The compiled steps a run calls, and what they take besides the state and the batch."""
  train: CompiledSteps
  evals: Dict[str, Any]  # The run's evaluators by name (flexivit_jax.evaluators).
  teacher_params: Dict[str, Any]  # Replicated on the devices.
  compute: ComputeMeter


def compile_steps(run: Run, state, shardings, first: Mapping[str, Any]) -> Steps:
  """The train and eval steps; with `config.aot_compile`, every train step compiled now."""
  config, mesh = run.config, run.mesh
  repl = NamedSharding(mesh, P())
  teacher_params = jax.device_put(run.teacher_params, repl)
  cache = make_step_cache(config)
  train = CompiledSteps(
      make_train_step(run.model, run.tx, make_loss_fn(config), run.teachers, seed=config.seed,
                      mixup_p=float(config.mixup.get("p", 0.0) or 0.0),
                      accum_steps=config.grad_accum_steps),
      (shardings, repl), donate=True, num_devices=mesh.size, cache=cache, name="train")
  evals = build_evaluators(config, run.model, mesh, cache)
  # Shapes and shardings only: compiling later must not touch donated buffers.
  abstract = jax.tree.map(abstract_of,
                          (state, teacher_params, to_global(first, batch_sharding(mesh))))
  if config.aot_compile:
    for v in run.sampler.all_values():
      train.compile(flexi_key(v), *abstract)
  compute = ComputeMeter(lambda f: train.gflops(f, *abstract), run.sampler, run.start_step)
  return Steps(train, evals, teacher_params, compute)


def run_steps(run: Run, steps: Steps, state, inputs: data.BatchIterator,
              first: Mapping[str, Any], *, ckpts: manager.StateCheckpoints,
              writer: runlog.MetricWriter, progress: console.Progress, preemption: Preemption
              ) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """Steps from the resume point to the end: (last metrics and state, final eval results)."""
  config, total, mesh = run.config, run.total_steps, run.mesh
  bsh = batch_sharding(mesh)
  throughput = console.Throughput(config.input.batch_size, run.start_step)
  last: Dict[str, Any] = {}
  final: Dict[str, float] = {}
  last_saved = run.start_step or None
  pending = None  # The step whose save was started last in this run.
  local = first
  for step in range(run.start_step, total):
    flexi = flexi_key(run.sampler(step))
    state, step_metrics = steps.train(flexi, state, steps.teacher_params, to_global(local, bsh))
    steps.compute.add(flexi)
    done = step + 1
    if config.check_nan:  # Before anything is written for this step.
      check_finite(done, step_metrics, flexi, last_saved)
    due = cadence.due_after(config, done, total, preempted=preemption.should_stop(done))
    if due.log:
      row = log_train_step(run, done, step_metrics, flexi, throughput)
      row["compute/gflops"] = steps.compute.total_gflops()
      writer.write(done, row)
      last.update(row)
      progress.update(1, loss=f"{row['train/loss']:.4f}", **{k: str(v) for k, v in flexi})
      progress.log(step_line_fields(row, flexi), images_per_s=row["img_per_s"])
    else:
      progress.update(1)
    if due.evals:
      results = evaluate({n: steps.evals[n] for n in due.evals}, state["params"], run.eval_flexis)
      writer.write(done, {**results, "compute/gflops": steps.compute.total_gflops()})
      last.update(results)
      progress.line(f"eval step {done}/{total}  "
                    + tables.format_eval_line(results, local["image"].shape[1]))
      final = results if done == total else final
    if due.checkpoint:
      pending = save_checkpoint(ckpts, done, state, progress, pending)
      last_saved = done
    if due.stop:
      finish_checkpoint(ckpts, progress, pending)
      raise Preempted(done)
    if done < total:
      local = next(inputs)
  finish_checkpoint(ckpts, progress, pending)
  return {**last, "step": total, "state": state}, final


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
