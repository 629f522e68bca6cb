"""The model, its teachers and the train state at step 0 (fresh, or from `config.model_init`)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from flexivit_jax.checkpoints import adapt, sources
from flexivit_jax.models import resize, tasks
from flexivit_jax.models import vit
from flexivit_jax.models.segmenter import BACKBONE, DECODER
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import eval_names
from flexivit_jax.training.sharding import shardings_of

log = logging.getLogger("flexivit_jax")
FlexiKey = eval_names.FlexiKey


# ----------------------------------------------------------------------------
# Model, teachers and state.


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen model run at its fixed size on its own input key."""
  name: str
  model: FlexiViT
  input_key: str
  call: Tuple[Tuple[str, Any], ...]


def load_teacher_params(model: FlexiViT, path: str) -> dict:
  """A teacher checkpoint adapted to its model (posemb cls row / grid, like model_init)."""
  hp = model.hparams()
  grid = resize.to_hw(model.posemb_size, "posemb_size")
  image = jnp.zeros((1, grid[0] * hp["patch_size"][0], grid[1] * hp["patch_size"][1], 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image)["params"])
  init = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)
  params, _ = adapt.load_pretrained(init, path, log=log.info)
  return params


def teachers_of(distill_cfg) -> Tuple[Teacher, ...]:
  """The teachers of `config.distill`, without their params."""
  teachers = []
  for name, t in sorted(distill_cfg.teachers.items()):
    call = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in dict(t.get("call", {})).items()))
    teachers.append(Teacher(name, vit.from_config(t["model"]), t.get("input_key", "image"),
                            call))
  return tuple(teachers)


def build_teachers(distill_cfg) -> Tuple[Tuple[Teacher, ...], Dict[str, Any]]:
  teachers = teachers_of(distill_cfg)
  params = {t.name: load_teacher_params(t.model, distill_cfg.teachers[t.name]["init"])
            for t in teachers}
  return teachers, params


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


def load_model_init(config, model, init_params: dict, source) -> dict:
  """`init_params` filled from `source` (`config.model_init`, a path or loaded params).

  A Segmenter takes a FlexiViT checkpoint (no `backbone` key) into its backbone, the
  checkpoint's classification head dropped and its decoder left at init; a Segmenter
  checkpoint loads whole.
  """
  if not isinstance(source, Mapping):
    source = sources.load_params(source)
  kw = dict(dont_load=tuple(config.model_load.get("dont_load", ())), log=log.info,
            kernel=config.model_load.get("kernel", "keep"))
  if tasks.is_segmenter(model) and not (isinstance(source, Mapping) and BACKBONE in source):
    kw["dont_load"] += ("head/.*",)
    backbone, _ = adapt.load_pretrained(init_params[BACKBONE], source, **kw)
    log.info("loaded the checkpoint into the Segmenter's backbone; %s/ keeps its init", DECODER)
    return {**init_params, BACKBONE: backbone}
  return adapt.load_pretrained(init_params, source, **kw)[0]


def init_state(config, model, tx, mesh, image_shape, flexi: FlexiKey, loaded=None):
  """eval_shape -> shardings -> jit(init); or starts from `config.model_init`.

  `loaded`: the params of `config.model_init` when already read (`prepare_run`
  reads them before anything compiles, so a bad file fails early).
  """
  init_fn = make_init_fn(model, tx, image_shape, flexi, config.init_head_bias)
  rng = jax.random.key(config.seed)
  if not config.model_init:
    shardings = shardings_of(jax.eval_shape(init_fn, rng), mesh, config.param_sharding)
    return jax.jit(init_fn, out_shardings=shardings)(rng), shardings
  init_params = jax.jit(lambda r: init_fn(r)["params"])(rng)
  params = load_model_init(config, model, jax.tree.map(np.asarray, init_params),
                           config.model_init if loaded is None else loaded)
  # The loaded kernel may keep another size than init's: shard by the loaded shapes.
  from_params = lambda p: state_from_params(tx, p)
  shardings = shardings_of(jax.eval_shape(from_params, params), mesh, config.param_sharding)
  return jax.jit(from_params, out_shardings=shardings)(params), shardings
