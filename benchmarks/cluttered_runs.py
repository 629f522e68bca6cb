"""Shared pieces of the paper's experiments on `cluttered_digits` (docs/results.md).

Every experiment is a list of training runs built from the README demo's config
(`flexivit_jax.training.demos.cluttered_config`), each trained into its own
folder under `--root`. A run whose folder already holds `result.json` (written
when it finished) is read back instead of trained again, so an interrupted
experiment restarts where it stopped and two experiments that need the same run
(the same config) share it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Dict, Mapping, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from flexivit_jax import xla_env  # noqa: E402
xla_env.apply_cpu_defaults()  # The train CLI's XLA:CPU flags: runs here train as `train` does.
from flexivit_jax.data import cluttered_digits  # noqa: E402
from flexivit_jax.evaluators import predict  # noqa: E402
from flexivit_jax.models.vit import FlexiViT  # noqa: E402
from flexivit_jax.outputs import eval_names, runlog  # noqa: E402
from flexivit_jax.training import config as config_lib  # noqa: E402
from flexivit_jax.training import demos, loop  # noqa: E402

IMAGE = cluttered_digits.CANVAS  # 64 px.


def demo_config(arg: str = ""):
  """The README demo's config (FlexiViT, patches 16..8) with `arg` (e.g. 'baseline,steps=N')."""
  return demos.cluttered_config(arg or None)


def vit_config(patch: int, steps: int, seed: int = 0):
  """A plain ViT trained and evaluated at one patch size only, its kernel and position
  embedding stored at that size (nothing is resized): the separately trained model."""
  grid = IMAGE // patch
  c = demos.cluttered_config(f"baseline,steps={steps}")
  c.seed = seed
  c.model.update(patch_size=(patch, patch), posemb_size=(grid, grid))
  c.flexi = dict(seqhw=dict(v=(grid,), p="uniform"))
  c.eval_flexi = dict(seqhw=dict(v=(grid,)))
  return c


def quiet(c, evals_at_end_only: bool = True):
  """Progress as plain lines; one evaluation (at the end) and one checkpoint, unless asked."""
  c.progress = "lines"
  if evals_at_end_only:
    c.log_eval_steps = c.total_steps
  c.ckpt_steps = c.total_steps
  return c


def train(config, workdir: str) -> dict:
  """Trains `config` into `workdir` (or reads the result of an earlier run there).

  Returns {"curves": {evaluator: {label: prec@1}}, "wall_s", "steps", "gflops_train"}:
  the final evaluation, the run's wall time (compiles and evaluations included)
  and its cumulative training GFLOPs.
  """
  done = os.path.join(workdir, "result.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  start = time.time()
  loop.train_and_evaluate(config_lib.complete(config), workdir)
  result = result_of(workdir, config, wall_s=round(time.time() - start, 1))
  with open(done, "w") as f:
    json.dump(result, f, indent=1)
  return result


TRAINING_KEYS = ("seed", "total_steps", "model", "model_init", "flexi", "loss", "distill", "lr",
                 "wd", "schedule", "grad_clip_norm", "optax_name", "optax", "mixup")


def adopt_copy(source: str, workdir: str, config) -> None:
  """Copies a finished run of `source` to `workdir` and adopts it, after checking that
  it trained with exactly `config`'s training settings (evaluation cadence aside)."""
  if os.path.exists(os.path.join(workdir, "result.json")):
    return
  with open(os.path.join(source, "config.json")) as f:
    theirs = json.load(f)
  ours = json.loads(json.dumps(config_lib.complete(config).to_dict()))
  differ = [k for k in TRAINING_KEYS if theirs.get(k) != ours.get(k)]
  if differ:
    raise SystemExit(f"error: {source} was not trained with this experiment's config "
                     f"(differs in {', '.join(differ)})")
  shutil.copytree(source, workdir, ignore=shutil.ignore_patterns("run.lock"),
                  dirs_exist_ok=True)
  adopt(workdir, config)


def adopt(workdir: str, config) -> None:
  """Marks a finished run of the same training config (e.g. the README demo, run by its
  own command) as this experiment's run: writes its result.json from its metrics, with
  the wall time from its files (config.json written at start, the last checkpoint)."""
  ckpts = os.path.join(workdir, "checkpoints")
  last = max(os.path.getmtime(os.path.join(ckpts, d)) for d in os.listdir(ckpts))
  wall = round(last - os.path.getmtime(os.path.join(workdir, "config.json")), 1)
  write_json(os.path.join(workdir, "result.json"),
             {**result_of(workdir, config, wall_s=wall), "adopted": True})


def result_of(workdir: str, config, wall_s: float) -> dict:
  rows = runlog.read_metrics(workdir)
  curves = eval_names.final_eval_curves(rows)
  result = dict(
      curves={name: {eval_names.flexi_label(k): v for k, v in curve.items()}
              for name, curve in curves.items()},
      evals=[{**{eval_names.flexi_label(k): v for k, v in
                 eval_names.final_eval_curves([r]).get("test", {}).items()},
              "step": r["step"], "compute/gflops": r.get("compute/gflops")}
             for r in rows if any(k.startswith("eval/") for k in r)],
      wall_s=wall_s, steps=int(config.total_steps),
      gflops_train=max((r.get("compute/gflops") or 0.0) for r in rows))
  return result


def test_acc(result: Mapping, seqhw: int) -> Optional[float]:
  """prec@1 (%) of a run's final test evaluation at a seqhw, None if not evaluated there."""
  value = result["curves"].get("test", {}).get(f"seqhw={seqhw}")
  return None if value is None else 100.0 * value


def forward_gflops(config, seqhws: Sequence[int]) -> Dict[int, float]:
  """Forward GFLOPs per 64 px image of a config's model at each seqhw (XLA's count)."""
  model = FlexiViT(**config_lib.complete(config).model.to_dict())
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, IMAGE, IMAGE, 3)))["params"])
  return {s: predict.gflops_per_image(model, shapes, IMAGE, seqhw=s) for s in seqhws}


def write_json(path: str, value) -> None:
  with open(path, "w") as f:
    json.dump(value, f, indent=1)
  print(f"wrote {path}", flush=True)
