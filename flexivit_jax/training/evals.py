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
from flexivit_jax.evaluators import predict as predict_lib
from flexivit_jax.evaluators import sweep
from flexivit_jax.models import tasks
from flexivit_jax.models.tasks import Model
from flexivit_jax.outputs import eval_names, plots, tables
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import step_cache
from flexivit_jax.training.compiled_steps import CompiledSteps, FlexiKey, make_predict_step
from flexivit_jax.training.sharding import batch_sharding, pad_batch, to_global


def _eval_config(config, ev: Mapping[str, Any]) -> Dict[str, Any]:
  """An evaluator's keys with the run's defaults: `batch_size` the training batch size,
  the data dir of its splits `input.data_dir`, `ignore_label` the run's (segmentation)."""
  out = {**ev, "batch_size": ev.get("batch_size", config.input.batch_size)}
  for key in config_lib.EVAL_DATA_KEYS:
    if key in out:
      out[key] = config_lib.data_config(config, out[key])
  if "datasets" in out and config.input.data_dir:  # A few-shot evaluator's named splits.
    out.setdefault("data_dir", config.input.data_dir)
  if "ignore_label" in evaluators_lib.evaluator_class("", ev).KEYS:
    out.setdefault("ignore_label", config.ignore_label)
  return out


def build_evaluators(config, model: Model, mesh: Mesh,
                     cache: Optional[step_cache.StepCache] = None) -> Dict[str, Any]:
  """{name: evaluator} of `config.evals`, predicting through one compiled step per model
  output they read (logits for classification, pre-logits for few-shot and retrieval).

  An eval batch need not divide the device count: each process pads its slice
  with masked examples up to a multiple of its devices, then the batch is split
  over the whole mesh.
  """
  bsh = batch_sharding(mesh)
  local_devices = mesh.size // jax.process_count()
  steps: Dict[str, CompiledSteps] = {}

  def place(local):
    return to_global(pad_batch(local, local_devices), bsh)

  def predict_fn_of(output: str):
    if output not in steps:
      name = "eval" if output == "logits" else f"eval_{output}"
      steps[output] = CompiledSteps(make_predict_step(model, output), bsh, donate=False,
                                    cache=cache, name=name)
    step = steps[output]
    return lambda params, images, flexi: step(flexi, params, images)

  built = {}
  for name, ev in config.evals.items():
    key = f"evals.{name}"
    predict_fn = predict_fn_of(evaluators_lib.output_name(key, ev))
    built[name] = evaluators_lib.build(key, _eval_config(config, ev), predict_fn,
                                       num_classes=model.num_classes, place_batch=place)
  return built


def evaluate(evaluators: Mapping[str, Any], params, flexis: Sequence[FlexiKey]
             ) -> Dict[str, float]:
  """The logged numbers of every evaluator at every flexi value (`log_values`: prec@1 for
  classification, few-shot accuracies, recalls, miou and pixel_acc for segmentation), by
  metric name; one data pass per evaluator and split."""
  return {eval_names.eval_metric_name(name, flexi, metric): value
          for name, evaluator in evaluators.items()
          for (flexi, metric), value in evaluator.log_values(evaluator.run(params, flexis)).items()}


def forward_gflops(model: Model, params, image_size: int, channels: int,
                   flexis: Sequence[FlexiKey]) -> Dict[FlexiKey, float]:
  """Forward GFLOPs per image (XLA's count, one image) at each flexi value: the cost
  side of the final table. Compiles one tiny forward per value, shapes only."""
  if tasks.is_segmenter(model):  # Its decoder and upsampling counted too.
    predictor = sweep.SegmentationPredictor(model)
    return {f: predictor.gflops(params, f, (1, image_size, image_size, channels))
            for f in flexis}
  return {f: predict_lib.gflops_per_image(model, params, image_size, channels=channels,
                                          **dict(f))
          for f in flexis}


def print_final_table(workdir: str, results: Mapping[str, float], image_size: int,
                      progress, gflops: Optional[Mapping[FlexiKey, float]] = None) -> None:
  """The table of prec@1 (and forward GFLOPs/img, when given) at every evaluated size,
  and per evaluator a plot: prec@1 against GFLOPs/img, or against patch size."""
  curves = eval_names.final_eval_curves([results])
  if not curves:
    return
  metrics = eval_names.final_eval_metrics([results])
  what = "mIoU" if set(metrics.values()) == {"miou"} else "Accuracy"
  progress.write("\n%s per patch size (image %dpx):\n%s" % (
      what, image_size, tables.format_table(curves, image_size, metrics, gflops)))
  if jax.process_index() == 0:
    for name, curve in curves.items():
      out = os.path.join(workdir, f"eval_{name}.png")
      if gflops:
        path = plots.plot_accuracy_vs_cost({name: curve}, gflops, out, image_size=image_size,
                                           metric=metrics[name],
                                           title=f"{name}: {metrics[name]} vs compute per patch")
      else:
        path = plots.plot_accuracy({name: curve}, out, image_size=image_size,
                                   metric=metrics[name],
                                   title=f"{name}: {metrics[name]} per patch size")
      progress.write(f"plot: {path}")
