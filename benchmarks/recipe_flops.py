"""Training FLOPs of the recipes at paper scale, from XLA's cost analysis of the compiled step.

Compiling a full ViT-B step at batch 4096 on a CPU is slow, so the step is
compiled at batch 1 with depth 1 and depth 2 (student and teacher together):
a ViT's FLOPs are exactly affine in depth and linear in batch, so
  flops(depth, batch) = batch * (flops_1 + (depth - 1) * (flops_2 - flops_1)).
Prints one JSON line per (recipe, flexi value) and a summary per recipe.

  PYTHONPATH=. python benchmarks/recipe_flops.py --out /tmp/recipe_flops.json
"""
import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp

from flexivit_jax.evaluators import flops
from flexivit_jax.training import config as config_lib
from flexivit_jax.training import optim
from flexivit_jax.training import compiled_steps
from flexivit_jax.models import vit
from flexivit_jax.training import initial_state
from flexivit_jax.training.flexi import FlexiSampler

CONFIGS = ("i1k_deit3_distill.py:variant=S", "i1k_deit3_distill.py:variant=B",
           "i1k_deit3_distill.py:variant=L", "i21k_sup.py", "i21k_distill.py",
           "i21k_curriculum.py", "i21k_curriculum.py:baseline", "transfer.py:seqhw=8")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with_depth(model_cfg, depth):
  return dict(model_cfg, depth=depth)




def step_flops(config, depth: int, flexi, res: int, teacher_res) -> float:
  """FLOPs of one compiled train step at batch 1 with every model at `depth`."""
  model = vit.from_config(_with_depth(config.model, depth))
  tx, _ = optim.make_optimizer(config, 100_000)
  image = jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image.shape),
                                             **dict(flexi))["params"])
  state = jax.eval_shape(lambda p: initial_state.state_from_params(tx, p), params)
  teachers, tparams = [], {}
  for name, t in sorted(config.distill.teachers.items()):
    tm = vit.from_config(_with_depth(t["model"], depth))
    timg = jnp.zeros((1, teacher_res, teacher_res, 3))
    teachers.append(initial_state.Teacher(name, tm, t.get("input_key", "image"), ()))
    tparams[name] = jax.eval_shape(lambda: tm.init(jax.random.key(0), timg)["params"])
  batch = {"image": image,
           "labels": jax.ShapeDtypeStruct((1, config.model["num_classes"]), jnp.float32)}
  for t in teachers:
    batch[t.input_key] = jax.ShapeDtypeStruct((1, teacher_res, teacher_res, 3), jnp.float32)
  step = compiled_steps.make_train_step(model, tx, compiled_steps.make_loss_fn(config), tuple(teachers),
                                 seed=0, mixup_p=float(config.mixup.p or 0.0))
  compiled = jax.jit(step, static_argnames="flexi").lower(state, tparams, batch,
                                                          flexi=flexi).compile()
  return flops.gflops(compiled) * 1e9


def recipe_flops(spec: str, res: int = 240):
  config = config_lib.complete(config_lib.load_config_file(os.path.join(REPO, "configs", spec)))
  hp = vit.from_config(config.model).hparams()
  teacher_res = {"i1k": 384, "i21k_distill": 224}.get(
      "i1k" if spec.startswith("i1k") else spec.split(".")[0], res)
  sampler = FlexiSampler(config.flexi, seed=0, total_steps=100_000)
  out = []
  for value in sampler.all_values():
    flexi = initial_state.flexi_key(value)
    f1 = step_flops(config, 1, flexi, res, teacher_res)
    f2 = step_flops(config, 2, flexi, res, teacher_res)
    per_image = f1 + (hp["depth"] - 1) * (f2 - f1)
    row = dict(config=spec, flexi=dict(value), depth=hp["depth"],
               gflops_per_step=per_image * config.input.batch_size / 1e9,
               batch=config.input.batch_size)
    print(json.dumps(row), flush=True)
    out.append(row)
  return out


def main(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  args = parser.parse_args(argv)
  rows = []
  for spec in args.configs.split(","):
    rows += recipe_flops(spec)
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1:])
