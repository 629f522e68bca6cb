"""A training run's pieces, built and checked against the data before anything compiles,
and the train state it starts from."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from flexivit_jax import data, paths
from flexivit_jax.checkpoints import manager, sources
from flexivit_jax.errors import UserError
from flexivit_jax.models import tasks
from flexivit_jax.models.vit import resolve_patch
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import optim
from flexivit_jax.training.flexi import FlexiSampler
from flexivit_jax.training.initial_state import (Teacher, build_teachers, flexi_key,
                                                 init_state, make_init_fn)
from flexivit_jax.training.sharding import check_batch_size, make_mesh, shardings_of

log = logging.getLogger("flexivit_jax")


def total_steps(config) -> int:
  if config.total_steps is not None:
    return int(config.total_steps)
  num, _ = data.dataset_info(config_lib.data_config(config, config.input.data))
  return max(1, int(round(config.total_epochs * num / config.input.batch_size)))


def check_flexi_fits(values, image_hw: Tuple[int, int]) -> None:
  """Every flexi value must give a valid patch for the input images."""
  for v in values:
    resolve_patch(image_hw, v.get("seqhw"), v.get("patch_size"))


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything a training run is made of, built before anything compiles."""
  config: ml_collections.ConfigDict
  workdir: str
  name: str  # What started it (the config file), for the start line.
  mesh: Mesh
  total_steps: int
  start_step: int
  model: tasks.Model  # FlexiViT, or a Segmenter for config.task='segmentation'.
  teachers: Tuple[Teacher, ...]
  teacher_params: Dict[str, Any]
  sampler: FlexiSampler
  eval_flexis: list
  tx: Any
  lr_fn: Callable
  model_init: Optional[Dict[str, Any]]  # The params of config.model_init.


def prepare_run(config: ml_collections.ConfigDict, workdir: str, *, start_step: int,
                name: str) -> Run:
  """Builds the pieces of a run from `start_step`, compiling nothing."""
  paths.makedirs(workdir)
  if config.compile_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compile_cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  mesh = make_mesh(config.mesh)
  check_batch_size(config.input.batch_size, mesh, "input.batch_size")
  optim.check_accum_steps(config.grad_accum_steps, config.input.batch_size, mesh.size)
  for eval_name, ev in config.evals.items():  # Eval batches are padded to the devices.
    bs = ev.get("batch_size", config.input.batch_size)
    if bs % jax.process_count():
      raise UserError(f"evals.{eval_name}.batch_size={bs} must be divisible by the "
                       f"{jax.process_count()} processes")
  steps = total_steps(config)
  teachers, teacher_params = build_teachers(config.distill)
  model_init = sources.load_params(config.model_init) if config.model_init else None
  sampler = FlexiSampler(config.flexi, seed=config.seed, total_steps=steps)
  eval_sampler = (FlexiSampler(config.eval_flexi, seed=0, total_steps=steps)
                  if config.eval_flexi else sampler)
  tx, sched_fn = optim.make_optimizer(config, steps)
  return Run(config, workdir, name, mesh, steps, start_step,
             tasks.from_config(config.model, config.task),
             teachers, teacher_params, sampler,
             [flexi_key(v) for v in eval_sampler.all_values()], tx,
             optim.make_lr_fn(config.lr, sched_fn), model_init)


def make_train_iterator(config, start_step: int) -> data.BatchIterator:
  """The training input pipeline, positioned at `start_step`."""
  return data.train_iterator(
      config_lib.data_config(config, config.input.data), config.input.pp, config.input.batch_size,
      seed=config.seed, start_step=start_step, num_threads=config.input.num_threads,
      prefetch=config.input.prefetch)


def check_inputs(run: Run, first: Mapping[str, np.ndarray]) -> None:
  """Every flexi value and teacher must fit the images the pipeline produces (`first`)."""
  image_hw = first["image"].shape[1:3]
  check_flexi_fits(run.sampler.all_values(), image_hw)
  check_flexi_fits([dict(f) for f in run.eval_flexis], image_hw)
  num_classes = run.model.num_classes
  if run.config.task == "segmentation":
    check_pixel_labels(first, num_classes, run.config.ignore_label)
  elif not num_classes:  # Without a head the model gives pre-logits, which no loss takes.
    labels = first.get("labels")
    raise UserError("model.num_classes is not set, so the model has no head to train; set it"
                    + (f" (input.pp makes labels with {labels.shape[-1]} classes)"
                       if labels is not None else ""))
  elif "labels" in first and first["labels"].shape[-1] != num_classes:
    raise UserError(f"model.num_classes={num_classes} but input.pp makes labels with "
                     f"{first['labels'].shape[-1]} classes; make them equal")
  for t in run.teachers:
    if t.input_key not in first:
      raise UserError(f"teacher {t.name!r} reads batch key {t.input_key!r}, which input.pp "
                       f"does not produce (keys: {sorted(first)})")
    # Without call arguments a teacher runs at its stored patch size.
    call = dict(t.call) or {"patch_size": t.model.hparams()["patch_size"]}
    check_flexi_fits([call], first[t.input_key].shape[1:3])


def check_pixel_labels(first: Mapping[str, np.ndarray], num_classes: int,
                       ignore_label: int) -> None:
  """Segmentation: input.pp must make per-pixel int `labels` of the images' size, each a
  class id below model.num_classes or the ignore label."""
  image, labels = first["image"], first.get("labels")
  if labels is None:
    raise UserError(f"task 'segmentation' needs per-pixel 'labels' from input.pp (e.g. "
                    f"...|seg_labels()); it makes {sorted(first)}")
  shape_ok = labels.ndim in (3, 4) and labels.shape[1:3] == image.shape[1:3] and (
      labels.ndim == 3 or labels.shape[3] == 1)
  if not shape_ok or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"input.pp makes labels of shape {labels.shape[1:]} ({labels.dtype}); task "
                    f"'segmentation' needs int class ids per pixel of the {image.shape[1]}x"
                    f"{image.shape[2]} images ((H, W) or (H, W, 1))")
  values = np.unique(labels)
  bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
  if bad.size:
    raise UserError(f"input.pp makes pixel label {int(bad[0])}, outside 0..{num_classes - 1} "
                    f"(model.num_classes) and not ignore_label={ignore_label}")


def start_state(run: Run, ckpts: manager.StateCheckpoints, image_shape):
  """(state, shardings, step): fresh at step 0, or the newest readable checkpoint on this
  mesh, whose step is before `run.start_step` when the newer ones were set aside."""
  config = run.config
  flexi = flexi_key(run.sampler.all_values()[0])
  if run.start_step and not config.model_init:  # Nothing to materialise before restoring.
    init_fn = make_init_fn(run.model, run.tx, image_shape, flexi, config.init_head_bias)
    abstract = jax.eval_shape(init_fn, jax.random.key(config.seed))
    shardings = shardings_of(abstract, run.mesh, config.param_sharding)
  else:
    state, shardings = init_state(config, run.model, run.tx, run.mesh, image_shape, flexi,
                                  run.model_init)
    if not run.start_step:
      return state, shardings, 0
    abstract = jax.eval_shape(lambda s: s, state)
    del state
  restored = ckpts.restore(abstract, shardings)
  if restored is None:
    raise UserError(f"the checkpoints in {ckpts.directory} vanished while starting; "
                    "is another run using this workdir?")
  state, step = restored
  log.info("resumed from %s at step %d", ckpts.directory, step)
  return state, shardings, step


def start_line(run: Run) -> str:
  """The first progress line: what runs, where, on what, for how long, from where."""
  n, procs = run.mesh.size, jax.process_count()
  platform = run.mesh.devices.flat[0].platform
  parts = ["start", f"config {run.name}" if run.name else "", f"workdir {run.workdir}",
           f"{n} {platform} device{'s' * (n != 1)} in {procs} process{'es' * (procs != 1)}",
           f"{run.total_steps} steps of batch {run.config.input.batch_size}",
           f"resumed from step {run.start_step}" if run.start_step else "from step 0"]
  return "  ".join(p for p in parts if p)
