"""Tests for flexivit_jax.training.losses against numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexivit_jax.training import losses


def _np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def data():
  r = np.random.default_rng(0)
  logits = r.normal(size=(4, 5)) * 3
  labels = np.eye(5)[r.integers(0, 5, size=4)] * 0.9 + 0.02  # smoothed soft labels
  return logits.astype(np.float32), labels.astype(np.float32)


def test_sigmoid_xent(data):
  logits, labels = data
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1)
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels, reduction=False), want, rtol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), want.mean(), rtol=1e-5)


def test_sigmoid_xent_stable_for_huge_logits():
  logits = jnp.array([[1e4, -1e4]])
  labels = jnp.array([[1.0, 0.0]])
  assert float(losses.sigmoid_xent(logits, labels)) == pytest.approx(0.0, abs=1e-6)
  assert np.isfinite(float(losses.sigmoid_xent(-logits, labels)))


def test_softmax_xent(data):
  logits, labels = data
  want = -(labels * _np_log_softmax(logits.astype(np.float64))).sum(-1)
  np.testing.assert_allclose(losses.softmax_xent(logits, labels, reduction=False), want, rtol=1e-5)
  np.testing.assert_allclose(losses.softmax_xent(logits, labels), want.mean(), rtol=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_distill_kl(data, t):
  student, _ = data
  teacher = np.flip(student, -1).copy()
  lt = _np_log_softmax(teacher.astype(np.float64) / t)
  ls = _np_log_softmax(student.astype(np.float64) / t)
  want = t**2 * (np.exp(lt) * (lt - ls)).sum(-1)
  got = losses.distill_kl(student, teacher, temperature=t, reduction=False)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert float(losses.distill_kl(student, teacher, temperature=t)) > 0
  assert float(losses.distill_kl(student, student, temperature=t)) == pytest.approx(0.0, abs=1e-6)


def test_distill_kl_gradient_only_to_student(data):
  student, _ = data
  teacher = jnp.flip(student, -1)
  gs, gt = jax.grad(losses.distill_kl, argnums=(0, 1))(jnp.asarray(student), teacher)
  assert float(jnp.abs(gs).sum()) > 0
  np.testing.assert_array_equal(gt, 0.0)
  with pytest.raises(ValueError, match="temperature=0"):
    losses.distill_kl(student, teacher, temperature=0)


def test_mixup_shared_weight():
  rng = jax.random.PRNGKey(0)
  x = jnp.arange(4 * 3, dtype=jnp.float32).reshape(4, 3)
  y = jax.nn.one_hot(jnp.array([0, 1, 2, 3]), 4)
  z = jnp.arange(4 * 2, dtype=jnp.float32).reshape(4, 2) * -2.0
  for seed in range(5):
    new_rng, mx, my, mz, w = losses.mixup(jax.random.PRNGKey(seed), x, y, z, p=0.5)
    a = float(w[0])
    assert 0.5 <= a <= 1.0 and float(w.sum()) == pytest.approx(1.0, abs=1e-6)
    for orig, mixed in ((x, mx), (y, my), (z, mz)):
      want = a * np.asarray(orig) + (1 - a) * np.roll(np.asarray(orig), 1, axis=0)
      np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-5)
    # Labels still sum to one per example.
    np.testing.assert_allclose(my.sum(-1), 1.0, rtol=1e-5)
  assert not np.array_equal(jax.random.key_data(new_rng), jax.random.key_data(rng))


def test_mixup_fold_in_and_n3():
  x = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
  _, _, w0 = losses.mixup(jax.random.PRNGKey(0), x, p=1.0, fold_in=0)
  _, _, w1 = losses.mixup(jax.random.PRNGKey(0), x, p=1.0, fold_in=1)
  assert not np.allclose(w0, w1)
  _, m, w = losses.mixup(jax.random.PRNGKey(0), x, p=1.0, n=3)
  assert w.shape == (3,) and float(w[0]) >= float(w[1]) >= float(w[2])
  want = sum(float(w[i]) * np.roll(np.asarray(x), i, axis=0) for i in range(3))
  np.testing.assert_allclose(m, want, rtol=1e-5, atol=1e-6)


def test_mixup_disabled_and_errors():
  x = jnp.ones((2, 3))
  for p in (0, 0.0, None):
    _, out, w = losses.mixup(jax.random.PRNGKey(0), x, p=p)
    assert out is x
    np.testing.assert_array_equal(w, [1.0, 0.0])
  with pytest.raises(ValueError, match="batch size"):
    losses.mixup(jax.random.PRNGKey(0), x, jnp.ones((3, 3)), p=0.2)
  with pytest.raises(ValueError, match="int32"):
    losses.mixup(jax.random.PRNGKey(0), jnp.ones((2,), jnp.int32), p=0.2)
  with pytest.raises(ValueError, match="p=-1"):
    losses.mixup(jax.random.PRNGKey(0), x, p=-1)


def test_registry():
  assert losses.get_loss("sigmoid_xent") is losses.sigmoid_xent
  assert losses.get_loss("softmax_xent") is losses.softmax_xent
  with pytest.raises(ValueError, match="'bce'.*sigmoid_xent.*softmax_xent"):
    losses.get_loss("bce")


def test_mixup_jits():
  x = jnp.arange(8.0).reshape(4, 2)
  fn = jax.jit(lambda r, a: losses.mixup(r, a, p=0.2))
  _, m, w = fn(jax.random.PRNGKey(3), x)
  a = float(w[0])
  want = a * np.asarray(x) + (1 - a) * np.roll(np.asarray(x), 1, 0)
  np.testing.assert_allclose(m, want, rtol=1e-5)
