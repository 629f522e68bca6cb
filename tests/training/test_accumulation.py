"""Gradient accumulation: a step over N microbatches makes the full batch's update."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import load_config
from flexivit_jax.errors import UserError
from flexivit_jax.models import vit
from flexivit_jax.training import compiled_steps, initial_state, optim
from flexivit_jax.training.initial_state import Teacher

TINY = dict(num_classes=10, width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=(8, 8),
            posemb_size=(2, 2), head_zeroinit=False)


def keep_grads() -> optax.GradientTransformation:
  """An 'optimizer' that leaves the params and keeps the step's gradients as its state."""
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def loss_and_grads(accum_steps: int, *, distill: bool, mixup_p: float):
  """(loss, grads) of one step on a fixed batch of 16 at seqhw 2."""
  config = load_config(**({"loss": "sigmoid_xent"}))
  model = vit.FlexiViT(**TINY)
  teachers, teacher_params = (), {}
  if distill:
    teacher = vit.FlexiViT(**dict(TINY, depth=1))
    teachers = (Teacher("prof", teacher, "prof", (("seqhw", 3),)),)
    teacher_params = {"prof": jax.tree.map(lambda x: 3 * x, teacher.init(
        jax.random.key(2), jnp.zeros((1, 24, 24, 3)), seqhw=3)["params"])}
    config = load_config(**{"distill.temperature": 2.0})
  params = model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)), seqhw=2)["params"]
  tx = keep_grads()
  state = initial_state.state_from_params(tx, params)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  batch = {"image": jax.random.uniform(k1, (16, 16, 16, 3), minval=-1, maxval=1),
           "labels": jax.nn.one_hot(jax.random.randint(k2, (16,), 0, 10), 10),
           "prof": jax.random.uniform(k3, (16, 24, 24, 3), minval=-1, maxval=1)}
  step = compiled_steps.make_train_step(model, tx, compiled_steps.make_loss_fn(config), teachers,
                                        seed=0, mixup_p=mixup_p, accum_steps=accum_steps)
  state, metrics = jax.jit(step, static_argnames="flexi")(state, teacher_params, batch,
                                                          flexi=(("seqhw", 2),))
  return metrics, state["opt_state"]


@pytest.mark.parametrize("accum_steps,distill,mixup_p", [
    (2, False, 0.0), (4, False, 1.0), (4, True, 1.0), (16, True, 1.0)])
def test_accumulated_step_equals_the_full_batch_step(accum_steps, distill, mixup_p):
  """Same loss and gradients within 1e-6 relative (float32), with mixup and a teacher."""
  full_metrics, full = loss_and_grads(1, distill=distill, mixup_p=mixup_p)
  metrics, accumulated = loss_and_grads(accum_steps, distill=distill, mixup_p=mixup_p)
  np.testing.assert_allclose(metrics["train/loss"], full_metrics["train/loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-6)
  # Relative to the gradient's scale: some entries are exactly 0 in exact arithmetic (the
  # attention keys' bias), where float32 leaves only rounding noise of either sign.
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(full))
  for (path, g), a in zip(jax.tree_util.tree_leaves_with_path(full), jax.tree.leaves(accumulated)):
    error = float(np.max(np.abs(np.asarray(a) - np.asarray(g))))
    assert error <= 1e-6 * scale, (jax.tree_util.keystr(path), error, scale)
  assert float(full_metrics["grad_norm"]) > 0


def test_microbatches_keep_each_devices_rows():
  """Microbatch i holds rows i, i+k, ...: a device's contiguous rows stay on that device."""
  batch = {"x": jnp.arange(12)}
  split = compiled_steps.split_microbatches(batch, 3)["x"]
  np.testing.assert_array_equal(split, [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  for device_rows in (range(0, 6), range(6, 12)):  # Two devices of 6 rows each.
    for micro in np.asarray(split):
      mine = [r for r in micro if r in device_rows]
      assert len(mine) == 2


@pytest.mark.parametrize("value,message", [
    (0, "'grad_accum_steps' must be a positive int, got 0"),
    (True, "must be a positive int, got True"),
    (3, r"'grad_accum_steps'=3 must divide the per-device batch \(input.batch_size=16 .*"
        r"allowed: 1, 2, 4, 8, 16"),
])
def test_bad_accum_steps_fail_in_the_config(value, message):
  with pytest.raises(UserError, match=message):
    load_config(**{"input.batch_size": 16, "grad_accum_steps": value})


def test_accum_steps_must_divide_the_per_device_batch():
  optim.check_accum_steps(4, 32, devices=8)
  with pytest.raises(UserError, match=r"=8 must divide the per-device batch .*32 over 8 "
                                      r"devices\); allowed: 1, 2, 4$"):
    optim.check_accum_steps(8, 32, devices=8)
