"""The evaluations a run makes while it trains, and the final table.

The evaluators are the package's (`flexivit_jax.evaluators`, built by type) around
one compiled prediction step sharded over the run's mesh.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
from jax.sharding import Mesh

from flexivit_jax import evaluators as evaluators_lib
from flexivit_jax.models.tasks import Model
from flexivit_jax.outputs import eval_names, plots, tables
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import step_cache
from flexivit_jax.training.compiled_steps import CompiledSteps, FlexiKey, make_predict_step
from flexivit_jax.training.sharding import batch_sharding, pad_batch, to_global


def build_evaluators(config, model: Model, mesh: Mesh,
                     cache: Optional[step_cache.StepCache] = None) -> Dict[str, Any]:
  """{name: evaluator} of `config.evals`, all predicting through one compiled step.

  An eval batch need not divide the device count: each process pads its slice
  with masked examples up to a multiple of its devices, then the batch is split
  over the whole mesh. `batch_size` defaults to the training batch size and
  `data` to `input.data_dir`.
  """
  bsh = batch_sharding(mesh)
  predict = CompiledSteps(make_predict_step(model), bsh, donate=False, cache=cache, name="eval")
  local_devices = mesh.size // jax.process_count()

  def place(local):
    return to_global(pad_batch(local, local_devices), bsh)

  def predict_fn(params, images, flexi: FlexiKey):
    return predict(flexi, params, images)

  def eval_cfg(ev):
    """An eval's keys with the run's defaults: data_dir, batch size, ignore label."""
    cfg = {**ev, "data": config_lib.data_config(config, ev["data"]),
           "batch_size": ev.get("batch_size", config.input.batch_size)}
    if "ignore_label" in evaluators_lib.evaluator_class("", ev).KEYS:
      cfg.setdefault("ignore_label", config.ignore_label)
    return cfg

  return {name: evaluators_lib.build(f"evals.{name}", eval_cfg(ev), predict_fn,
                                     num_classes=model.num_classes, place_batch=place)
          for name, ev in config.evals.items()}


def evaluate(evaluators: Mapping[str, Any], params, flexis: Sequence[FlexiKey]
             ) -> Dict[str, float]:
  """What each evaluator logs (`LOGGED`: prec@1 of classification, miou and pixel_acc of
  segmentation) at every flexi value; one data pass per evaluator."""
  return {eval_names.eval_metric_name(name, flexi, metric): metrics[result]
          for name, evaluator in evaluators.items()
          for flexi, metrics in evaluator.run(params, flexis).items()
          for result, metric in evaluator.LOGGED.items()}


def print_final_table(workdir: str, results: Mapping[str, float], image_size: int,
                      progress) -> None:
  curves = eval_names.final_eval_curves([results])
  if not curves:
    return
  metrics = eval_names.final_eval_metrics([results])
  what = "mIoU" if set(metrics.values()) == {"miou"} else "Accuracy"
  progress.write("\n%s per patch size (image %dpx):\n%s" % (
      what, image_size, tables.format_table(curves, image_size, metrics)))
  if jax.process_index() == 0:
    for name, curve in curves.items():
      path = plots.plot_accuracy({name: curve}, os.path.join(workdir, f"eval_{name}.png"),
                                 image_size=image_size, metric=metrics[name],
                                 title=f"{name}: {metrics[name]} per patch size")
      progress.write(f"plot: {path}")
