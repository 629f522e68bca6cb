"""The models the analyses study: a given checkpoint, or a small one trained on bundled data.

Subjects are trained by the trainer itself (`loop.train_and_evaluate`) with
a demo config adjusted to the analysis: image size, grids and steps. The
config comes from the package's demos (`demos.digits_config`, what
configs/demo_digits.py returns, for `sklearn_digits`; `demos.cluttered_config`,
the README demo's, for `cluttered_digits`), so an installed package, which has
no configs/ folder, can build it. `runlocal=True` trains the demo's tiny
smoke-test model (on `cluttered_digits/small` for cluttered_digits).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax import data
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import loading, sweep
from flexivit_jax.models import vit
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import demos, loop

DIGITS_PP = ("decode|resize({size})|value_range(-1, 1)|"
             "onehot(10, key='label', key_result='labels')")
DIGITS_TEST = {"name": "sklearn_digits", "split": "test"}
# The bundled datasets a subject can be trained on: their demo configs. Both demos'
# models store an 8 px kernel (4 px under runlocal) and read 10 classes.
DEMO_CONFIGS = {"sklearn_digits": demos.digits_config, "cluttered_digits": demos.cluttered_config}


def check_dataset(name: str) -> str:
  if name not in DEMO_CONFIGS:
    raise UserError(f"unknown dataset {name!r} for an analysis subject; allowed: "
                    f"{', '.join(DEMO_CONFIGS)}")
  return name


def test_data(dataset: str, runlocal: bool = False) -> dict:
  """The test split a subject of `dataset` is evaluated on (its demo's test split)."""
  c = DEMO_CONFIGS[check_dataset(dataset)]("runlocal" if runlocal else None)
  return {"name": c.evals.test.data.name, "split": "test"}


def eval_pp(template: str, size: int) -> str:
  """The eval pp at an image side: `template` with '{size}' filled in."""
  if "{size}" not in template:
    raise UserError(f"the pp template must contain '{{size}}' (the image side), got {template!r}")
  return template.replace("{size}", str(size))


def subject_config(*, image_size: int, train_seqhws: Sequence[int], posemb: int,
                   steps: Optional[int], runlocal: bool = False, progress: str = "none",
                   dataset: str = "sklearn_digits"):
  """`dataset`'s demo config, trained at `image_size` on `train_seqhws`, no evals (analyses
  evaluate).

  `progress`: what its training shows (config.progress; the analysis CLIs pass theirs).
  """
  demo = DEMO_CONFIGS[check_dataset(dataset)]
  c = demo("runlocal" if runlocal else (f"steps={steps}" if steps else None))
  if steps:
    c.total_steps = steps
  if c.schedule.warmup_steps >= c.total_steps:  # Very short runs (notebook tests).
    c.schedule.warmup_steps = c.total_steps // 2
  c.model = {**c.model, "posemb_size": (posemb, posemb)}
  c.input.pp = eval_pp(DIGITS_PP, image_size)
  c.flexi = dict(seqhw=dict(v=tuple(train_seqhws), p="uniform"))
  c.eval_flexi = None
  c.evals = {}
  c.progress = progress
  c.ckpt_steps = c.total_steps
  c.log_training_steps = min(c.log_training_steps, c.total_steps)
  return config_lib.complete(c)


def train_subject(workdir: str, **kwargs) -> Tuple[FlexiViT, Dict[str, Any]]:
  """Trains (or resumes/reuses) a subject in `workdir`; kwargs of `subject_config`."""
  config = subject_config(**kwargs)
  state = loop.train_and_evaluate(config, workdir)["state"]
  params = jax.tree.map(np.asarray, state["params"])
  return vit.from_config(config.model), params


def load_subject(checkpoint: str, model_spec: Optional[str] = None
                 ) -> Tuple[FlexiViT, Dict[str, Any]]:
  model, params, _ = loading.load_model(checkpoint, model_spec)
  return model, params


def top1(model: FlexiViT, params: Mapping, data_cfg: Mapping, pp: str, seqhw: int,
         batch_size: int = 100) -> float:
  """Top-1 of `model` on a split at one grid (the sizes sweep of the evaluate CLI)."""
  rows = sweep.evaluate_model(model, params, [seqhw], data=data_cfg, pp=pp,
                              batch_size=batch_size, count_flops=False)
  return rows[0]["top1"]


def eval_images(data_cfg: Mapping, pp: str, num: int, batch_size: int = 100
                ) -> Tuple[np.ndarray, np.ndarray]:
  """The first `num` real (images, labels) of an eval split."""
  images, labels = [], []
  batches = data.eval_iterator(data_cfg, pp, batch_size)
  try:
    for batch in batches:
      keep = np.asarray(batch["_mask"])
      images.append(np.asarray(batch["image"])[keep])
      labels.append(np.asarray(batch["labels"])[keep].argmax(-1))
      if sum(len(x) for x in images) >= num:
        break
  finally:
    batches.close()
  return np.concatenate(images)[:num], np.concatenate(labels)[:num]


def forward(model: FlexiViT, params: Mapping, images, **call) -> Tuple[jax.Array, dict]:
  """(logits, intermediates) of one call, jitted per call arguments."""
  return _forward(model, tuple(sorted(call.items())))(params, jnp.asarray(images))


_FORWARDS: Dict[Any, Any] = {}


def _forward(model, call):
  key = (model, call)
  if key not in _FORWARDS:
    _FORWARDS[key] = jax.jit(lambda p, x: model.apply({"params": p}, x, **dict(call)))
  return _FORWARDS[key]
