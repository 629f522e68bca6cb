"""The evaluations a run makes while it trains, and the final table."""
from __future__ import annotations

import os
from typing import Dict, Mapping

import jax

from flexivit_jax import data
from flexivit_jax.errors import UserError
from flexivit_jax.outputs import eval_names, plots, tables
from flexivit_jax.training import config as config_lib
from flexivit_jax.training.sharding import batch_sharding, pad_batch, to_global


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
    for local in data.eval_data(config_lib.data_config(config, ev["data"]), ev["pp"], bs).iterate():
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
      results[eval_names.eval_metric_name(name, f)] = hits[f] / max(count, 1.0)
  return results


def print_final_table(workdir: str, results: Mapping[str, float], image_size: int,
                      progress) -> None:
  curves = eval_names.final_eval_curves([results])
  if not curves:
    return
  progress.write("\nAccuracy per patch size (image %dpx):\n%s" % (
      image_size, tables.format_table(curves, image_size)))
  if jax.process_index() == 0:
    for name, curve in curves.items():
      path = plots.plot_accuracy({name: curve}, os.path.join(workdir, f"eval_{name}.png"),
                                   image_size=image_size, title=f"{name}: prec@1 per patch size")
      progress.write(f"plot: {path}")
