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

  if config.task == "segmentation":
    ignore = config.ignore_label

    def pixel_loss(logits, batch, teacher_logits):
      del teacher_logits
      return losses.pixel_softmax_xent(logits, batch["labels"], ignore)
    return pixel_loss

  base = losses.get_loss(config.loss)

  def supervised_loss(logits, batch, teacher_logits):
    del teacher_logits
    return base(logits, batch["labels"])
  return supervised_loss


def split_microbatches(batch, accum_steps: int):
  """Every array (B, ...) as (accum_steps, B / accum_steps, ...): microbatch i holds examples
  i, i + k, i + 2k, ... so each device's contiguous rows of a batch sharded on its first
  axis stay on that device (no data moves between devices to form a microbatch)."""
  def split(x):
    rows = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jnp.swapaxes(rows, 0, 1)
  return jax.tree.map(split, batch)


def make_train_step(model: FlexiViT, tx, loss_fn: Callable, teachers: Tuple[Teacher, ...],
                    *, seed: int, mixup_p: float, accum_steps: int = 1) -> Callable:
  """train_step(state, teacher_params, batch, flexi) -> (state, metrics).

  metrics["finite"] says whether the loss and the gradient norm are finite: one
  scalar the loop fetches every step to stop at the first divergence.

  `accum_steps` > 1 accumulates gradients over that many microbatches of the step's
  batch under a `lax.scan`, so only one microbatch's activations are alive at a time;
  the update is the full batch's (the losses are batch means over equal microbatches,
  so the mean of the microbatch gradients is the batch gradient). Everything drawn per
  step is drawn once for the whole batch: the flexi value (static), mixup (applied to
  the whole batch before it is split, so each example is mixed with the same partner
  as without accumulation); teachers see each microbatch's own examples. Dropout draws
  one key per microbatch (folded from the step's), so with dropout the masks differ
  from a single-batch step's; their distribution does not.
  """

  def grads_of(params, batch, flexi: FlexiKey, teacher_params, rng_drop):
    """(loss, grads) of one (micro)batch."""
    teacher_logits = {
        t.name: jax.lax.stop_gradient(
            t.model.apply({"params": teacher_params[t.name]}, batch[t.input_key],
                          **dict(t.call))[0])
        for t in teachers}

    def loss(params):
      logits, _ = model.apply({"params": params}, batch["image"], **dict(flexi), train=True,
                              rngs={"dropout": rng_drop})
      return loss_fn(logits, batch, teacher_logits)

    return jax.value_and_grad(loss)(params)

  def accumulated_grads(params, batch, flexi: FlexiKey, teacher_params, rng_drop):
    """(mean loss, mean grads) over `accum_steps` microbatches, one at a time."""
    def add_microbatch(carry, xs):
      index, micro = xs
      value, grads = grads_of(params, micro, flexi, teacher_params,
                              jax.random.fold_in(rng_drop, index))
      return jax.tree.map(jnp.add, carry, (value, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(add_microbatch, zeros,
                            (jnp.arange(accum_steps), split_microbatches(batch, accum_steps)))
    return jax.tree.map(lambda x: x / accum_steps, total)

  def train_step(state, teacher_params, batch, flexi: FlexiKey):
    step = state["step"]
    rng = jax.random.fold_in(jax.random.key(seed), step)
    rng_mix, rng_drop = jax.random.split(rng)
    mix_keys = ["image", "labels"] + sorted({t.input_key for t in teachers} - {"image"})
    if mixup_p:
      _, *mixed, _ = losses.mixup(rng_mix, *[batch[k] for k in mix_keys], p=mixup_p)
      batch = {**batch, **dict(zip(mix_keys, mixed))}
    if accum_steps == 1:
      value, grads = grads_of(state["params"], batch, flexi, teacher_params, rng_drop)
    else:
      value, grads = accumulated_grads(state["params"], batch, flexi, teacher_params, rng_drop)
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
