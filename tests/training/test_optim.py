"""Tests for flexivit_jax.training.optim: schedules and the big_vision optimizer chain."""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from flexivit_jax.training import optim


def _f(x):
  """Schedule output as a python float."""
  return float(x)


def test_warmup_then_cosine():
  s = optim.make_schedule(100, decay_type="cosine", warmup_steps=10)
  assert _f(s(0)) == 0.0
  assert _f(s(5)) == pytest.approx(0.5)
  assert _f(s(10)) == pytest.approx(1.0)
  assert _f(s(55)) == pytest.approx(0.5, abs=1e-6)  # halfway through decay
  assert _f(s(100)) == pytest.approx(0.0, abs=1e-7)
  assert _f(s(150)) == pytest.approx(0.0, abs=1e-7)  # clipped past the end


def test_cosine_min_lr_and_warmup_percent():
  s = optim.make_schedule(100, decay_type="cosine", warmup_percent=0.2, min_lr=0.1)
  assert _f(s(20)) == pytest.approx(1.0)
  assert _f(s(10)) == pytest.approx(0.5)
  assert _f(s(100)) == pytest.approx(0.1)


def test_linear_and_constant():
  s = optim.make_schedule(110, decay_type="linear", warmup_steps=10, linear_end=0.2)
  assert _f(s(10)) == pytest.approx(1.0)
  assert _f(s(60)) == pytest.approx(0.6)
  assert _f(s(110)) == pytest.approx(0.2)
  c = optim.make_schedule(50, decay_type=None, warmup_steps=5)
  assert _f(c(1)) == pytest.approx(0.2)
  assert _f(c(49)) == 1.0


def test_rsqrt():
  s = optim.make_schedule(10**6, decay_type="rsqrt", warmup_steps=100, timescale=1000)
  assert _f(s(50)) == pytest.approx(0.5)
  assert _f(s(100)) == pytest.approx(1.0)
  assert _f(s(100 + 3000)) == pytest.approx(0.5)
  assert _f(s(100 + 1000)) == pytest.approx(1 / math.sqrt(2))


def test_default_schedule_is_the_reference_stair():
  """big_vision's default decay_type is 'stair' with no steps: 1 after warmup."""
  for s in (optim.make_schedule(100, warmup_steps=10), optim.schedule_from_config({}, 100),
            optim.schedule_from_config(dict(warmup_steps=10), 100)):
    assert _f(s(50)) == pytest.approx(1.0) and _f(s(99)) == pytest.approx(1.0)
  assert _f(optim.make_schedule(100, warmup_steps=10)(5)) == pytest.approx(0.5)
  stair = optim.make_schedule(100, decay_type="stair", steps=[30, 60], mults=[0.1, 0.01])
  got = [_f(stair(t)) for t in (0, 28, 29, 30, 59, 60, 99)]
  assert got == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_config_schedule_default_is_stair():
  from flexivit_jax.training import config as config_lib
  c = config_lib.default_config()
  assert c.schedule.get("decay_type", "stair") == "stair"


def test_schedule_is_jittable():
  s = optim.make_schedule(100, warmup_steps=10)
  assert _f(jax.jit(s)(jnp.int32(5))) == pytest.approx(0.5)


def test_schedule_errors():
  with pytest.raises(ValueError, match="stair.*allowed"):
    optim.make_schedule(10, decay_type="stairs")
  with pytest.raises(ValueError, match="equal lengths"):
    optim.make_schedule(10, decay_type="stair", steps=[3], mults=[])
  with pytest.raises(ValueError, match="bogus.*allowed"):
    optim.schedule_from_config(dict(decay_type="cosine", bogus=1), 10)
  with pytest.raises(ValueError, match="warmup_steps=20"):
    optim.make_schedule(10, warmup_steps=20)
  with pytest.raises(ValueError, match="total_steps=0"):
    optim.make_schedule(0)


def _params():
  return {
    "dense": {
      "kernel": jnp.array([[0.5, -1.0], [2.0, 0.25]], jnp.float32),
      "bias": jnp.array([0.3, -0.7], jnp.float32),
    }
  }


def _grads(scale=1.0):
  return {
    "dense": {
      "kernel": scale * jnp.array([[0.1, -0.2], [0.3, 0.05]], jnp.float32),
      "bias": scale * jnp.array([-0.4, 0.02], jnp.float32),
    }
  }


def _config(**kw):
  cfg = dict(
    lr=0.01,
    wd=1e-4,
    schedule=dict(decay_type="linear", linear_end=0.0),
    grad_clip_norm=None,
    optax_name="scale_by_adam",
    optax=dict(mu_dtype="bfloat16"),
  )
  cfg.update(kw)
  return cfg


def _np_tree(t):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), t)


def test_two_steps_match_hand_computation():
  total, lr, wd, clip = 4, 0.01, 1e-4, 0.3
  b1, b2, eps = 0.9, 0.999, 1e-8
  tx, sched = optim.make_optimizer(_config(grad_clip_norm=clip), total)
  params = _params()
  g1 = _grads(1.0)  # |g1| ~ 0.55 > clip: clipped
  g2 = jax.tree.map(lambda x: 0.4 * jnp.flip(x), g1)  # |g2| < clip: untouched
  state = tx.init(params)
  u1, state = tx.update(g1, state, params)
  params1 = jax.tree.map(lambda p, u: p + u, params, u1)
  u2, state = tx.update(g2, state, params1)

  p0 = _np_tree(params)
  n1, n2 = _np_tree(g1), _np_tree(g2)
  norm1 = math.sqrt(sum(float(np.sum(x**2)) for x in jax.tree.leaves(n1)))
  assert norm1 > clip
  for name in ("kernel", "bias"):
    decay = wd if name == "kernel" else 0.0
    ga = n1["dense"][name] * clip / norm1
    mu = (1 - b1) * ga
    nu = (1 - b2) * ga**2
    adam1 = (mu / (1 - b1)) / (np.sqrt(nu / (1 - b2)) + eps)
    s0 = 1.0  # linear schedule over 4 steps: sched(0) = 1, sched(1) = 0.75
    want1 = -s0 * (lr * adam1 + decay * p0["dense"][name])
    np.testing.assert_allclose(u1["dense"][name], want1, rtol=1e-5, atol=1e-9)
    # Step 2: the stored first moment is bf16-rounded, second is f32.
    p1 = p0["dense"][name] + want1
    gb = n2["dense"][name]  # below the clip threshold: untouched
    bf16 = lambda x: x.astype(ml_dtypes.bfloat16).astype(np.float64)
    # optax computes `b1 * mu` in bf16 (python-float weak typing, so b1 itself
    # is rounded to bf16) before adding the f32 `(1 - b1) * g`.
    mu2 = bf16(bf16(np.float64(b1)) * bf16(mu)) + (1 - b1) * gb
    nu2 = b2 * nu + (1 - b2) * gb**2
    adam2 = (mu2 / (1 - b1**2)) / (np.sqrt(nu2 / (1 - b2**2)) + eps)
    want2 = -0.75 * (lr * adam2 + decay * p1)
    np.testing.assert_allclose(u2["dense"][name], want2, rtol=1e-4, atol=1e-9)
  assert float(sched(1)) == pytest.approx(0.75)


def _adam_state(state):
  is_adam = lambda x: hasattr(x, "mu")
  found = [s for s in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(s)]
  assert len(found) == 1
  return found[0]


def test_mu_bf16_and_clipping_state():
  clip = 0.1
  tx, _ = optim.make_optimizer(_config(grad_clip_norm=clip), 10)
  params, g = _params(), _grads(1.0)
  state = tx.init(params)
  _, state = tx.update(g, state, params)
  adam = _adam_state(state)
  assert adam.mu["dense"]["kernel"].dtype == jnp.bfloat16
  assert adam.nu["dense"]["kernel"].dtype == jnp.float32
  norm = float(optax.tree.norm(g))
  want_mu = 0.1 * np.asarray(g["dense"]["kernel"]) * clip / norm
  np.testing.assert_allclose(np.asarray(adam.mu["dense"]["kernel"], np.float32), want_mu, rtol=1e-2)


def test_wd_decoupled_from_lr_and_bias_not_decayed():
  # Zero gradient => adam update is 0; the whole update is the weight decay.
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  for lr in (1e-3, 10.0):
    tx, _ = optim.make_optimizer(_config(lr=lr, wd=0.5, schedule=None), 10)
    u, _ = tx.update(zeros, tx.init(params), params)
    kernel = np.asarray(params["dense"]["kernel"])
    np.testing.assert_allclose(u["dense"]["kernel"], -0.5 * kernel, rtol=1e-6)
    np.testing.assert_array_equal(u["dense"]["bias"], 0.0)


def test_wd_scaled_by_schedule():
  params = _params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  schedule = dict(decay_type="cosine", warmup_steps=2)
  tx, _ = optim.make_optimizer(_config(wd=0.5, schedule=schedule), 10)
  state = tx.init(params)
  u0, state = tx.update(zeros, state, params)  # sched(0) = 0 during warmup
  u1, state = tx.update(zeros, state, params)  # sched(1) = 0.5
  np.testing.assert_array_equal(u0["dense"]["kernel"], 0.0)
  kernel = np.asarray(params["dense"]["kernel"])
  np.testing.assert_allclose(u1["dense"]["kernel"], -0.25 * kernel, rtol=1e-6)


def test_kernel_mask_and_lr_fn():
  mask = optim.kernel_mask({"a": {"kernel": 1, "bias": 2, "my_kernel": 3}, "kernel": 4})
  assert mask == {"a": {"kernel": True, "bias": False, "my_kernel": False}, "kernel": True}
  schedule = dict(decay_type="cosine", warmup_steps=10)
  _, sched_fn = optim.make_optimizer(_config(lr=0.1, schedule=schedule), 100)
  lr_fn = optim.make_lr_fn(0.1, sched_fn)
  assert lr_fn(5) == pytest.approx(0.05)


def test_optimizer_config_errors():
  with pytest.raises(ValueError, match="'lr' must be a finite number >= 0, got None"):
    optim.make_optimizer(_config(lr=None), 10)
  with pytest.raises(ValueError, match="grad_clip_norm=-1"):
    optim.make_optimizer(_config(grad_clip_norm=-1.0), 10)
  with pytest.raises(ValueError, match="optax_name='adamw'"):
    optim.make_optimizer(_config(optax_name="adamw"), 10)
  with pytest.raises(ValueError, match="wd_mults"):
    optim.make_optimizer(_config(wd_mults=[(".*", 1.0)]), 10)
