"""FlexiViT: reference parity, an independent numpy formulation, variants, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf  # Plainly: a broken TF must fail the parity tests, not skip them.

from conftest import REF_SEQHWS, reference_model
from flexivit_jax import FlexiViT, VARIANTS
from flexivit_jax.models.vit import count_params


@pytest.mark.parametrize("seqhw", REF_SEQHWS)
def test_gap_model_matches_reference(ref_params, ref_outputs, seqhw):
  model = reference_model()
  logits, out = model.apply({"params": ref_params}, ref_outputs["images"], seqhw=seqhw)
  np.testing.assert_allclose(logits, ref_outputs[f"logits:seqhw={seqhw}"], rtol=0, atol=1e-4)
  np.testing.assert_allclose(out["pre_logits"], ref_outputs[f"pre_logits:seqhw={seqhw}"],
                             rtol=0, atol=1e-4)
  assert out["stem"].shape == (2, seqhw, seqhw, 48)


# ---------------------------------------------------------------------------
# An independent formulation, written the way the reference computes things
# (dense resize matrix from one-hot basis patches through TensorFlow, float64
# numpy transformer), used to check the pool types the reference file lacks.


def _np_pi_resize(kernel, q):
  p = kernel.shape[0]
  basis = np.eye(p * p, dtype=np.float32).reshape(p * p, p, p, 1)
  mat = tf.image.resize(basis, (q, q), method="bilinear").numpy().reshape(p * p, q * q).T
  flat = kernel.reshape(p * p, -1).astype(np.float64)
  return (np.linalg.pinv(mat.T.astype(np.float64)) @ flat).reshape(q, q, *kernel.shape[2:])


def _np_layernorm(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_attention(xq, xkv, p):
  q = np.einsum("nld,dhk->nlhk", xq, p["query"]["kernel"]) + p["query"]["bias"]
  k = np.einsum("nld,dhk->nlhk", xkv, p["key"]["kernel"]) + p["key"]["bias"]
  v = np.einsum("nld,dhk->nlhk", xkv, p["value"]["kernel"]) + p["value"]["bias"]
  att = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
  att = np.exp(att - att.max(-1, keepdims=True))
  att /= att.sum(-1, keepdims=True)
  y = np.einsum("nhqs,nshk->nqhk", att, v)
  return np.einsum("nqhk,hkd->nqd", y, p["out"]["kernel"]) + p["out"]["bias"]


def _np_mlp(x, p):
  h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
  h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def np_flexivit(params, images, seqhw, pool_type):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  n, hh, ww, _ = images.shape
  patch = hh // seqhw
  kernel = _np_pi_resize(p["embedding"]["kernel"], patch)
  x = images[:, :seqhw * patch, :seqhw * patch].astype(np.float64)
  x = x.reshape(n, seqhw, patch, seqhw, patch, -1).transpose(0, 1, 3, 2, 4, 5)
  x = np.einsum("nabhwc,hwcd->nabd", x, kernel) + p["embedding"]["bias"]
  d = x.shape[-1]
  pe = p["pos_embedding"].reshape(1, 7, 7, d)
  if seqhw != 7:
    pe = tf.image.resize(pe, (seqhw, seqhw), method="bilinear", antialias=True).numpy()
  x = x.reshape(n, -1, d) + pe.reshape(1, -1, d)
  if pool_type == "tok":
    x = np.concatenate([np.tile(p["cls"], (n, 1, 1)), x], axis=1)
  for i in range(len([k for k in p["Transformer"] if k.startswith("encoderblock_")])):
    b = p["Transformer"][f"encoderblock_{i}"]
    y = _np_layernorm(x, b["LayerNorm_0"])
    x = x + _np_attention(y, y, b["MultiHeadDotProductAttention_0"])
    x = x + _np_mlp(_np_layernorm(x, b["LayerNorm_1"]), b["MlpBlock_0"])
  x = _np_layernorm(x, p["Transformer"]["encoder_norm"])
  if pool_type == "gap":
    x = x.mean(1)
  elif pool_type == "tok":
    x = x[:, 0]
  else:
    m = p["MAPHead_0"]
    x = _np_attention(np.tile(m["probe"], (n, 1, 1)), x, m["MultiHeadDotProductAttention_0"])
    x = (x + _np_mlp(_np_layernorm(x, m["LayerNorm_0"]), m["MlpBlock_0"]))[:, 0]
  return x @ p["head"]["kernel"] + p["head"]["bias"]


@pytest.mark.parametrize("seqhw", [5, 12])
def test_numpy_formulation_matches_reference(ref_params, ref_outputs, seqhw):
  got = np_flexivit(ref_params, ref_outputs["images"], seqhw, "gap")
  np.testing.assert_allclose(got, ref_outputs[f"logits:seqhw={seqhw}"], atol=1e-4)


@pytest.mark.parametrize("pool_type", ["tok", "map", "gap"])
def test_pool_types_match_numpy_formulation(pool_type):
  model = reference_model(pool_type=pool_type, head_zeroinit=False)
  images = np.asarray(jax.random.uniform(jax.random.key(1), (2, 96, 96, 3), minval=-1, maxval=1))
  params = model.init(jax.random.key(0), images, seqhw=3)["params"]
  if pool_type == "tok":
    params["cls"] = jax.random.normal(jax.random.key(2), params["cls"].shape)
  for seqhw in (3, 4, 8):  # Kernel 32 -> 32, 24 (down), 12 (down); posemb down and up.
    logits, _ = model.apply({"params": params}, images, seqhw=seqhw)
    np.testing.assert_allclose(logits, np_flexivit(params, images, seqhw, pool_type),
                               rtol=0, atol=1e-4)


def test_intermediates_and_patch_size_argument(ref_params, ref_outputs):
  model = reference_model()
  images = ref_outputs["images"]
  logits, out = model.apply({"params": ref_params}, images, seqhw=10)
  for key in ("stem", "with_posemb", "encoded", "pre_logits", "pre_logits_2d", "logits_2d"):
    assert key in out, key
  assert out["encoder"]["block01"]["+mlp"].shape == (2, 100, 48)
  assert out["logits_2d"].shape == (2, 10, 10, 10)
  by_patch, _ = model.apply({"params": ref_params}, images, patch_size=(24, 24))
  np.testing.assert_array_equal(by_patch, logits)
  default, _ = reference_model(seqhw=10).apply({"params": ref_params}, images)
  np.testing.assert_array_equal(default, logits)
  _, out = model.apply({"params": ref_params}, images)  # Stored kernel size: 32 -> 7x7.
  assert out["stem"].shape == (2, 7, 7, 48)


def test_rectangular_grid_and_tok_shapes():
  model = FlexiViT(num_classes=3, width=16, depth=1, num_heads=2, mlp_dim=32,
                   patch_size=(8, 8), pool_type="tok")
  images = jnp.zeros((2, 48, 64, 3))
  params = model.init(jax.random.key(0), images, seqhw=(4, 8))["params"]
  logits, out = model.apply({"params": params}, images, seqhw=(6, 4))
  assert logits.shape == (2, 3) and out["stem"].shape == (2, 6, 4, 16)
  assert out["pre_logits_2d"].shape == (2, 6, 4, 16)


def test_sincos_posemb_and_grad_through_flexi_sizes():
  model = FlexiViT(num_classes=4, width=16, depth=1, num_heads=2, posemb="sincos2d",
                   head_zeroinit=False)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = model.init(jax.random.key(1), images, seqhw=4)["params"]
  assert "pos_embedding" not in params

  @jax.jit
  def loss_grad(params, seqhw_is_8):
    def loss(p):
      return jnp.sum(model.apply({"params": p}, images, seqhw=8)[0] ** 2)
    return jax.grad(loss)(params)

  grads = loss_grad(params, 0)
  assert float(jnp.abs(grads["embedding"]["kernel"]).sum()) > 0


@pytest.mark.parametrize("variant", list(VARIANTS) + ["B/8", "S/16"])
def test_every_variant_builds(variant):
  model = FlexiViT(num_classes=1000, variant=variant, pool_type="tok")
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                             seqhw=7))["params"]
  width, depth, mlp_dim, _ = VARIANTS[variant.split("/")[0]]
  assert shapes["pos_embedding"].shape == (1, 49, width)
  assert shapes["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (
      width, mlp_dim)
  assert f"encoderblock_{depth - 1}" in shapes["Transformer"]
  kernel = (8, 8) if variant == "B/8" else (16, 16) if variant == "S/16" else (32, 32)
  assert shapes["embedding"]["kernel"].shape == (*kernel, 3, width)
  expected_counts = {"S/16": 21_993_832, "B/8": 86_011_624}
  if variant in expected_counts:
    assert count_params(shapes) == expected_counts[variant]


def test_explicit_fields_override_variant():
  model = FlexiViT(num_classes=10, variant="S", depth=2, pool_type="tok")
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                             seqhw=4))["params"]
  assert set(params["Transformer"]) == {"encoderblock_0", "encoderblock_1", "encoder_norm"}
  assert params["cls"].shape == (1, 1, 384)


BAD_CALLS = [
    (dict(seqhw=0), "seqhw must be a positive"),
    (dict(seqhw=300), r"seqhw=300 is larger than the image \(240x240\)"),
    (dict(patch_size=(256, 16)), r"patch_size=\(256, 16\) is larger than the image"),
    (dict(seqhw=10, patch_size=16), "pass seqhw or patch_size, not both"),
]


@pytest.mark.parametrize("kwargs,message", BAD_CALLS)
def test_bad_call_arguments(ref_params, kwargs, message):
  model = reference_model()
  with pytest.raises(ValueError, match=message):
    jax.jit(lambda p, x: model.apply({"params": p}, x, **kwargs))(
        ref_params, jnp.zeros((1, 240, 240, 3)))


def test_bad_images(ref_params):
  model = reference_model()
  with pytest.raises(ValueError, match="4 channels but the patch-embedding kernel has shape"):
    model.apply({"params": ref_params}, jnp.zeros((1, 240, 240, 4)), seqhw=10)
  with pytest.raises(ValueError, match="must be NHWC"):
    model.apply({"params": ref_params}, jnp.zeros((240, 240, 3)), seqhw=10)
  with pytest.raises(ValueError, match="look NCHW"):
    model.apply({"params": ref_params}, jnp.zeros((1, 3, 240, 240)), seqhw=10)


def test_bad_fields():
  x = jnp.zeros((1, 32, 32, 3))
  for kwargs, message in [(dict(variant="XL"), "unknown ViT variant 'XL'"),
                          (dict(variant="S", pool_type="cls"), "unknown pool_type 'cls'"),
                          (dict(width=10, depth=1, num_heads=3), "not divisible by num_heads"),
                          (dict(depth=1), "needs width, num_heads"),
                          (dict(variant="S", posemb="rope"), "unknown posemb 'rope'")]:
    with pytest.raises(ValueError, match=message):
      FlexiViT(num_classes=2, **kwargs).init(jax.random.key(0), x, seqhw=2)


def test_mismatched_posemb_in_params(ref_params):
  model = reference_model(posemb_size=(10, 10))
  with pytest.raises(ValueError, match=r"pos_embedding has shape \(1, 49, 48\).*load_pretrained"):
    model.apply({"params": ref_params}, jnp.zeros((1, 240, 240, 3)), seqhw=10)


def test_blocked_attention_equals_unblocked_with_a_ragged_last_block():
  from flexivit_jax.models.layers import _attend, blocked_attention
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 2, 37, 8))
  np.testing.assert_allclose(blocked_attention(q, k, v, block=10), _attend(q, k, v),
                             atol=1e-6)


@pytest.mark.parametrize("seqhw", [5, 6])
def test_folded_coarse_patch_embedding_equals_the_resized_kernel(ref_params, ref_outputs,
                                                                 seqhw):
  """At 48 and 40 px the stem maps patches to the stored 32x32 (fewer FLOPs); the
  model with the kernel PI-resized up front (as Predictor caches it) agrees."""
  from flexivit_jax.evaluators.predict import params_at_size
  model = reference_model()
  patch = 240 // seqhw
  fixed_model, fixed_params = params_at_size(model, ref_params, (patch, patch), (7, 7))
  images = ref_outputs["images"]
  _, folded = model.apply({"params": ref_params}, images, seqhw=seqhw)
  _, resized = fixed_model.apply({"params": fixed_params}, images, seqhw=seqhw)
  scale = float(jnp.abs(resized["stem"]).max())
  np.testing.assert_allclose(folded["stem"], resized["stem"], rtol=0, atol=1e-5 * scale)
