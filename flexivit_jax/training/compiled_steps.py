"""The jitted steps: the loss (the only difference between supervised and distillation),
the train step, the prediction the evaluators run, and one compiled executable per flexi value.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import flops
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.outputs import eval_names
from flexivit_jax.training import losses, step_cache
from flexivit_jax.training.initial_state import Teacher

FlexiKey = eval_names.FlexiKey


# ----------------------------------------------------------------------------
# Loss functions: the only difference between supervised and distillation.


def make_loss_fn(config) -> Callable:
  """loss(student_logits, batch, teacher_logits) -> scalar."""
  if config.distill.teachers:
    t = config.distill.temperature

    def distill_loss(logits, batch, teacher_logits):
      del batch
      kls = [losses.distill_kl(logits, tl, temperature=t) for tl in teacher_logits.values()]
      total = sum(kls)
      return total / len(kls) if config.distill.combine_teachers == "mean" else total
    return distill_loss

  base = losses.get_loss(config.loss)

  def supervised_loss(logits, batch, teacher_logits):
    del teacher_logits
    return base(logits, batch["labels"])
  return supervised_loss


def make_train_step(model: FlexiViT, tx, loss_fn: Callable, teachers: Tuple[Teacher, ...],
                    *, seed: int, mixup_p: float) -> Callable:
  """train_step(state, teacher_params, batch, flexi) -> (state, metrics).

  metrics["finite"] says whether the loss and the gradient norm are finite: one
  scalar the loop fetches every step to stop at the first divergence.
  """

  def train_step(state, teacher_params, batch, flexi: FlexiKey):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    rng_mix, rng_drop = jax.random.split(rng)
    mix_keys = ["image", "labels"] + sorted({t.input_key for t in teachers} - {"image"})
    if mixup_p:
      _, *mixed, _ = losses.mixup(rng_mix, *[batch[k] for k in mix_keys], p=mixup_p)
      batch = {**batch, **dict(zip(mix_keys, mixed))}
    teacher_logits = {
        t.name: jax.lax.stop_gradient(
            t.model.apply({"params": teacher_params[t.name]}, batch[t.input_key],
                          **dict(t.call))[0])
        for t in teachers}

    def loss(params):
      logits, _ = model.apply({"params": params}, batch["image"], **dict(flexi), train=True,
                              rngs={"dropout": rng_drop})
      return loss_fn(logits, batch, teacher_logits)

    value, grads = jax.value_and_grad(loss)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
    out = {"params": params, "opt_state": opt_state, "step": step + 1}
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
    return out, {"train/loss": value, "grad_norm": grad_norm, "finite": finite}

  return train_step


def make_predict_step(model: FlexiViT, output: str = "logits") -> Callable:
  """predict(params, images, flexi) -> the model's `output` (logits, pre_logits, or any key
  of its outputs dict): the model as the evaluators run it."""

  def predict(params, images, flexi: FlexiKey):
    logits, outputs = model.apply({"params": params}, images, **dict(flexi))
    if output == "logits":
      return logits
    if output not in outputs:
      raise UserError(f"the model has no output {output!r}; it has {', '.join(sorted(outputs))}")
    return outputs[output]

  return predict


def make_step_cache(config) -> Optional[step_cache.StepCache]:
  """Traced steps under `compile_cache_dir/steps`, keyed by the config and this package."""
  if not config.compile_cache_dir:
    return None
  parts = [config.to_json_best_effort(sort_keys=True),
           step_cache.source_fingerprint(os.path.dirname(os.path.abspath(__file__))),
           flax.__version__, optax.__version__, np.__version__]
  return step_cache.StepCache(os.path.join(config.compile_cache_dir, "steps"),
                              hashlib.sha256("\n".join(parts).encode()).hexdigest())


def abstract_of(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


class CompiledSteps:
  """One compiled executable per flexi value (its static argument), cached."""

  def __init__(self, fn: Callable, shardings, donate: bool, num_devices: int = 1,
               cache: Optional[step_cache.StepCache] = None, name: str = "step"):
    self._fn, self._shardings, self._donate = fn, shardings, (0,) if donate else ()
    self._jit = jax.jit(fn, static_argnames=("flexi",), out_shardings=shardings,
                        donate_argnums=self._donate)
    self._compiled: Dict[FlexiKey, Any] = {}
    self._num_devices = num_devices
    self._cache, self._name = cache, name

  def compile(self, flexi: FlexiKey, *args):
    """The executable for `flexi` (args may be ShapeDtypeStructs with shardings)."""
    if flexi not in self._compiled:
      if self._cache is None:
        self._compiled[flexi] = self._jit.lower(*args, flexi=flexi).compile()
      else:
        abstract = jax.tree.map(abstract_of, args)
        self._compiled[flexi] = self._cache.compile(
            self._name, self._fn, flexi, abstract, out_shardings=self._shardings,
            donate_argnums=self._donate)
    return self._compiled[flexi]

  def gflops(self, flexi: FlexiKey, *args) -> float:
    """GFLOPs of one call on all devices, from XLA's cost analysis of the executable.

    The SPMD executable's analysis counts one device's share; times the devices.
    """
    return flops.gflops(self.compile(flexi, *args), self._num_devices)

  def __call__(self, flexi: FlexiKey, *args):
    return self.compile(flexi, *args)(*args)
