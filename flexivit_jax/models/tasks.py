"""The model of each task, built from a config: `config.task` picks the registry entry.

  classification  FlexiViT with its head (models/vit.py)
  segmentation    Segmenter: the same FlexiViT, headless, under a linear decoder

Both take the same `config.model` dict of FlexiViT fields; for segmentation its
`num_classes` is the number of pixel classes (the decoder's outputs) and the
backbone is built without a head, so a FlexiViT checkpoint loads into it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Union

from flexivit_jax.errors import UserError, did_you_mean
from flexivit_jax.models import vit
from flexivit_jax.models.segmenter import Segmenter
from flexivit_jax.models.vit import FlexiViT

Model = Union[FlexiViT, Segmenter]


def _classifier(model_cfg: Any, where: str) -> FlexiViT:
  return vit.from_config(model_cfg, where)


def _segmenter(model_cfg: Any, where: str) -> Segmenter:
  if not hasattr(model_cfg, "keys"):
    raise UserError(f"config key {where!r} must be a dict of FlexiViT fields, got {model_cfg!r}")
  fields = dict(model_cfg)
  num_classes = fields.pop("num_classes", None)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise UserError(f"config key '{where}.num_classes' must be the number of pixel classes "
                    f"(a positive int) for task 'segmentation', got {num_classes!r}")
  model = Segmenter(num_classes=num_classes, backbone=vit.from_config(fields, where))
  model.hparams()
  return model


TASKS: Dict[str, Callable[[Any, str], Model]] = {
    "classification": _classifier,
    "segmentation": _segmenter,
}


def check_task(task: Any) -> str:
  """`task` if it names a registered task, else a UserError listing them."""
  if not isinstance(task, str) or task not in TASKS:
    raise UserError(f"unknown config value task={task!r}{did_you_mean(str(task), TASKS)}; "
                    f"allowed: {', '.join(TASKS)}")
  return task


def from_config(model_cfg: Any, task: str = "classification", where: str = "model") -> Model:
  """The model of `task` from a config dict of FlexiViT fields (validated now)."""
  return TASKS[check_task(task)](model_cfg, where)


def is_segmenter(model: Any) -> bool:
  return isinstance(model, Segmenter)
