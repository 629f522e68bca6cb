"""The scale options of FlexiViT: dtype_mm, remat_policy and scan, and their numerics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REF_SEQHWS, reference_model
from flexivit_jax.checkpoints import layout
from flexivit_jax.errors import UserError
from flexivit_jax.models import vit
from flexivit_jax.models.layers import remat_policy_names
from flexivit_jax.models.vit import FlexiViT

TINY = dict(num_classes=5, width=32, depth=3, num_heads=2, mlp_dim=64, patch_size=(8, 8),
            posemb_size=(4, 4), dropout=0.1)


def _images(n=2, size=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def _loss_and_grads(model, params, images, seqhw, train):
  def loss(p):
    logits, _ = model.apply({"params": p}, images, seqhw=seqhw, train=train,
                            rngs={"dropout": jax.random.key(7)})
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def tiny():
  model = FlexiViT(**TINY)
  return model, model.init(jax.random.key(1), _images())["params"]


# ---------------------------------------------------------------------------
# Validation: before anything is traced.

@pytest.mark.parametrize("fields, message", [
    (dict(dtype_mm="float16"), "unknown dtype_mm 'float16'; allowed: ('float32', 'bfloat16')"),
    (dict(dtype_mm="bf16"), "unknown dtype_mm"),
    (dict(remat_policy="nothing"), "unknown remat_policy 'nothing'; allowed: none, "),
    # A factory of jax.checkpoint_policies, not a policy: it needs names.
    (dict(remat_policy="save_only_these_names"), "unknown remat_policy"),
])
def test_bad_options_are_user_errors(fields, message):
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    FlexiViT(**TINY, **fields).hparams()
  with pytest.raises(UserError, match="unknown"):
    vit.from_config({**TINY, **fields})


def test_config_types_are_checked():
  with pytest.raises(UserError, match="model.scan"):
    vit.from_config({**TINY, "scan": "yes"})
  with pytest.raises(UserError, match="model.dtype_mm"):
    vit.from_config({**TINY, "dtype_mm": jnp.bfloat16})


def test_remat_policies_are_the_ready_made_ones():
  names = remat_policy_names()
  assert names[0] == "none"
  assert {"nothing_saveable", "everything_saveable", "dots_saveable",
          "dots_with_no_batch_dims_saveable"} <= set(names)
  assert not {"save_only_these_names", "save_from_both_policies",
              "offload_dot_with_no_batch_dims"} & set(names)
  for name in names[1:]:
    FlexiViT(**TINY, remat_policy=name).hparams()


# ---------------------------------------------------------------------------
# remat and scan: the same numbers, another program.

@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_saveable"])
def test_remat_gives_identical_gradients(tiny, policy):
  model, params = tiny
  want = _loss_and_grads(model, params, _images(), 4, train=True)  # With dropout.
  got = _loss_and_grads(model.clone(remat_policy=policy), params, _images(), 4, train=True)
  np.testing.assert_array_equal(got[0], want[0])
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=0, atol=1e-7), got[1], want[1])


@pytest.mark.parametrize("remat", ["none", "nothing_saveable"])
def test_scan_gives_identical_logits_and_gradients(tiny, remat):
  model, params = tiny
  scanned_model = model.clone(scan=True, remat_policy=remat)
  scanned = layout.to_scan(params)
  assert scanned["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (
      3, 32, 64)
  for seqhw in (2, 4):
    want, want_out = model.apply({"params": params}, _images(), seqhw=seqhw)
    got, got_out = scanned_model.apply({"params": scanned}, _images(), seqhw=seqhw)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got_out["encoder"]["block02"]["+mlp"],
                               want_out["encoder"]["block02"]["+mlp"], rtol=0, atol=1e-5)
  # Gradients without dropout (scan draws its per-block dropout keys differently).
  want = _loss_and_grads(model, params, _images(), 4, train=False)
  got = _loss_and_grads(scanned_model, scanned, _images(), 4, train=False)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7),
               layout.to_pyloop(got[1]), want[1])


def test_scanned_model_trains_with_dropout(tiny):
  model, params = tiny
  scanned_model = model.clone(scan=True, remat_policy="nothing_saveable")
  loss, grads = _loss_and_grads(scanned_model, layout.to_scan(params), _images(), 4, train=True)
  assert np.isfinite(loss)
  assert grads["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (3, 32)


def test_scanned_init_has_the_stacked_layout(tiny):
  model, params = tiny
  init = model.clone(scan=True).init(jax.random.key(1), _images())["params"]
  assert set(init["Transformer"]) == {"encoderblock", "encoder_norm"}
  per_block = layout.to_pyloop(init)
  assert jax.tree.map(np.shape, per_block) == jax.tree.map(np.shape, params)
  # Each block initialised on its own key.
  assert not np.allclose(per_block["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]
                         ["kernel"], per_block["Transformer"]["encoderblock_1"]["MlpBlock_0"]
                         ["Dense_0"]["kernel"])


# ---------------------------------------------------------------------------
# dtype_mm.

@pytest.mark.parametrize("pool_type", ["gap", "tok", "map"])
def test_bfloat16_keeps_params_and_logits_float32(pool_type):
  model = FlexiViT(**{**TINY, "pool_type": pool_type, "dtype_mm": "bfloat16", "rep_size": 16})
  params = model.init(jax.random.key(1), _images())["params"]
  assert {str(a.dtype) for a in jax.tree.leaves(params)} == {"float32"}
  logits, out = model.apply({"params": params}, _images(), seqhw=4)
  assert logits.dtype == jnp.float32 and out["pre_logits"].dtype == jnp.float32
  assert out["stem"].dtype == jnp.bfloat16
  assert out["encoder"]["block01"]["+mlp"].dtype == jnp.bfloat16
  grads = _loss_and_grads(model, params, _images(), 4, train=True)[1]
  assert {str(a.dtype) for a in jax.tree.leaves(grads)} == {"float32"}


def test_resizes_stay_float32_under_bfloat16(tiny):
  """The PI-resized kernel and the resampled posemb are computed in float32 and cast once:
  the bf16 stem equals the float32 stem rounded to bf16 up to one conv in bf16."""
  model, params = tiny
  bf16 = model.clone(dtype_mm="bfloat16")
  for seqhw in (2, 3, 5):  # 16x16, 10x10 and 6x6 patches: resize and fold both used.
    _, out32 = model.apply({"params": params}, _images(), seqhw=seqhw)
    _, out16 = bf16.apply({"params": params}, _images(), seqhw=seqhw)
    ref = np.asarray(out32["with_posemb"])
    err = np.abs(np.asarray(out16["with_posemb"], np.float32) - ref).max()
    assert err <= 0.02 * np.abs(ref).max(), (seqhw, err)


@pytest.mark.parametrize("seqhw", REF_SEQHWS)
def test_bfloat16_logits_close_to_float32_on_the_reference(ref_params, ref_outputs, seqhw):
  images = ref_outputs["images"]
  want, _ = reference_model().apply({"params": ref_params}, images, seqhw=seqhw)
  got, _ = reference_model(dtype_mm="bfloat16").apply({"params": ref_params}, images,
                                                       seqhw=seqhw)
  scale = np.abs(np.asarray(want)).max()
  assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 0.05 * scale
  np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(want, -1))
