"""PI-resize and posemb resampling: reference parity, exactness property, structure."""
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from flexivit_jax import pi_resize, resample_posemb, resize_patch_embed
from flexivit_jax.models import resize
from flexivit_jax.errors import UserError

FLEXI_PATCHES = (48, 40, 30, 24, 20, 16, 15, 12, 10, 8)


@pytest.mark.parametrize("p", [4, 8, 10, 12, 15, 16, 20, 24, 30, 40, 48, 64])
def test_pi_resize_matches_reference(ref_params, ref_outputs, p):
  got = pi_resize(jnp.asarray(ref_params["embedding"]["kernel"]), p)
  # Within 1.2e-6 here: the resize matrix B is the reference's to the bit, and pinv
  # would amplify any difference in it (exact float64 weights gave 2e-5 at p=30).
  np.testing.assert_allclose(got, ref_outputs[f"pi_resize:{p}"], rtol=0, atol=2e-6)


def _resize_patches(x, hw):
  """Bilinear, half-pixel, no antialias: the pipeline's resize, on (N, h, w, C)."""
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "linear", antialias=False)


@pytest.mark.parametrize("old,new", [((8, 8), (8, 8)), ((8, 8), (12, 12)), ((5, 5), (16, 16)),
                                     ((4, 6), (9, 7)), ((6, 3), (6, 11)), ((7, 7), (21, 14))])
def test_pi_resize_keeps_tokens_when_upsampling(old, new):
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(*old, 3, 5)).astype(np.float32)
  patches = rng.normal(size=(16, *old, 3)).astype(np.float32)
  tokens = np.einsum("nhwc,hwcd->nd", patches, kernel)
  up = _resize_patches(patches, new)
  tokens_pi = np.einsum("nhwc,hwcd->nd", up, pi_resize(kernel, new))
  np.testing.assert_allclose(tokens_pi, tokens, rtol=1e-5, atol=1e-5 * np.abs(tokens).max())
  if old != new:
    tokens_vanilla = np.einsum("nhwc,hwcd->nd", up, resize_patch_embed(kernel, new, "vanilla"))
    assert np.abs(tokens_vanilla - tokens).max() > 1e-2 * np.abs(tokens).max()


def test_pi_resize_downsampling_is_least_squares():
  rng = np.random.default_rng(1)
  kernel = rng.normal(size=(8, 8, 1, 1))
  small = np.asarray(pi_resize(jnp.asarray(kernel, jnp.float32), 5))
  # Least-squares: the residual of B^T w_new = w_old is orthogonal to range(B^T).
  b = np.kron(np.asarray(resize.bilinear_resize_matrix(8, 5)),
              np.asarray(resize.bilinear_resize_matrix(8, 5)))  # (25, 64)
  residual = b.T @ small.reshape(-1) - kernel.reshape(-1)
  assert np.abs(b @ residual).max() < 1e-4


def test_resize_matrix_matches_tensorflow():
  import tensorflow as tf  # Plainly: a broken TF must fail, not skip.
  for old, new in [(32, 48), (32, 8), (7, 15), (16, 10)]:
    eye = np.eye(old, dtype=np.float32)[:, :, None, None]  # (old images) x old x 1 x 1
    tf_cols = tf.image.resize(eye, (new, 1), method="bilinear").numpy()[:, :, 0, 0].T
    np.testing.assert_allclose(resize.bilinear_resize_matrix(old, new), tf_cols, atol=1e-6)


def test_resize_matrix_is_jax_image_resize():
  """The numpy weights are jax.image.resize's (the reference's B): bit-identical from
  the stored 32x32 kernel to every flexi size, within float32 rounding elsewhere."""
  eye = lambda n: jnp.eye(n, dtype=jnp.float32)
  for new in FLEXI_PATCHES + (64, 32, 4, 1):
    cols = jax.image.resize(eye(32), (new, 32), "linear", antialias=False)
    np.testing.assert_array_equal(resize.bilinear_resize_matrix(32, new), cols)
  for old in (1, 3, 7, 16, 48):
    for new in (2, 13, 37, 61, 97):
      cols = jax.image.resize(eye(old), (new, old), "linear", antialias=False)
      np.testing.assert_allclose(resize.bilinear_resize_matrix(old, new), cols, rtol=0,
                                 atol=2e-6)


def test_same_size_returns_kernel_untouched():
  kernel = jnp.ones((16, 16, 3, 4))
  assert pi_resize(kernel, (16, 16)) is kernel
  assert resize_patch_embed(kernel, 16, "area") is kernel


def test_area_is_vanilla_scaled():
  kernel = jax.random.normal(jax.random.key(0), (8, 8, 3, 4))
  np.testing.assert_allclose(resize_patch_embed(kernel, 16, "area"),
                             resize_patch_embed(kernel, 16, "vanilla") * (64 / 256), rtol=1e-6)


def test_all_flexi_sizes_in_one_jit_without_dense_matrix():
  kernel = jnp.zeros((32, 32, 3, 768))

  def all_sizes(k):
    return [pi_resize(k, q) for q in FLEXI_PATCHES]

  outs = jax.jit(all_sizes)(kernel)
  assert [o.shape[:2] for o in outs] == [(q, q) for q in FLEXI_PATCHES]
  jaxpr = jax.make_jaxpr(all_sizes)(kernel)
  shapes = []

  def walk(jpr):
    for eqn in jpr.eqns:
      shapes.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  # Besides (partially contracted) kernels (with C=3, D=768), only the 1-D factors (at most
  # 48 x 32, per output row) exist: no dense (q*q, p*p) resize matrix, and no pinv (SVD) at
  # run time: the factors are host constants.
  others = [s for s in shapes if not (768 in s and 3 in s)]
  assert max((int(np.prod(s)) for s in others), default=0) <= 48 * 48 * 32
  assert "svd" not in str(jaxpr)


@pytest.mark.parametrize("method", ["pi", "vanilla"])
@pytest.mark.parametrize("old,new", [(8, 12), (12, 8), (8, 5)])
def test_resize_gradient_equals_the_dense_formulation(method, old, new):
  """The hand-written VJP (the two matmuls, transposed) is autodiff's of the dense map."""
  kernel = jax.random.normal(jax.random.key(0), (old, old, 3, 2))
  x = jax.random.normal(jax.random.key(1), (new, new, 3, 2))
  factor = (resize._pinv_transpose_np if method == "pi" else resize._bilinear_matrix_np)(old, new)
  dense = np.kron(factor, factor).astype(np.float32)  # (new*new, old*old)
  dense_resize = lambda k: (dense @ k.reshape(old * old, -1)).reshape(new, new, 3, 2)
  loss = lambda fn: lambda k: jnp.sum(jnp.sin(fn(k)) * x)
  ours = jax.jit(jax.grad(loss(lambda k: resize_patch_embed(k, new, method))))(kernel)
  ref = jax.grad(loss(dense_resize))(kernel)
  np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=1e-4)


def test_posemb_runtime_rule_is_antialiased_bilinear():
  pe = jax.random.normal(jax.random.key(0), (1, 49, 8))
  grid = pe.reshape(1, 7, 7, 8)
  for hw in [(5, 5), (6, 6), (10, 12)]:
    want = jax.image.resize(grid, (1, *hw, 8), "linear", antialias=True).reshape(1, -1, 8)
    np.testing.assert_allclose(resample_posemb(pe, hw), want, atol=1e-6)
  down = resample_posemb(pe, 5)
  no_aa = jax.image.resize(grid, (1, 5, 5, 8), "linear", antialias=False).reshape(1, -1, 8)
  assert np.abs(down - no_aa).max() > 1e-3  # Down-sampling really is antialiased.
  assert resample_posemb(pe, 7) is pe


@pytest.mark.parametrize("new", [(10, 10), (5, 5), (7, 12), (1, 3)])
def test_posemb_load_rule_is_align_corners_zoom(new):
  pe = np.random.default_rng(0).normal(size=(1, 49, 4)).astype(np.float32)
  got = resample_posemb(pe, new, rule="load")
  want = scipy.ndimage.zoom(pe.reshape(7, 7, 4), (new[0] / 7, new[1] / 7, 1), order=1)
  np.testing.assert_allclose(got, want.reshape(1, -1, 4), atol=1e-5)


def test_bad_inputs_name_the_value():
  with pytest.raises(ValueError, match="unknown patch-embedding resize method 'bicubic'"):
    resize_patch_embed(jnp.zeros((4, 4, 3, 2)), 8, "bicubic")
  with pytest.raises(ValueError, match=r"\(ph, pw, C, D\)"):
    pi_resize(jnp.zeros((4, 4, 3)), 8)
  with pytest.raises(ValueError, match="new_hw must be a positive"):
    pi_resize(jnp.zeros((4, 4, 3, 2)), (0, 8))
  with pytest.raises(ValueError, match="not a square grid"):
    resample_posemb(jnp.zeros((1, 50, 4)), 8)
  with pytest.raises(ValueError, match="unknown posemb resample rule"):
    resample_posemb(jnp.zeros((1, 49, 4)), 8, rule="cubic")


@pytest.mark.parametrize("method", ["pi", "vanilla", "area"])
@pytest.mark.parametrize("patch", [(48, 48), (40, 30), (12, 20)])
def test_folding_the_resize_into_patches_gives_the_same_tokens(method, patch):
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(32, 24, 3, 8)), jnp.float32)
  images = jnp.asarray(rng.normal(size=(2, 100, 90, 3)), jnp.float32)  # ragged edges
  conv = lambda x, k, stride: jax.lax.conv_general_dilated(
      x, k, stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  want = conv(images, resize_patch_embed(kernel, patch, method), patch)
  folded = resize.fold_into_patches(images, (32, 24), patch, method)
  assert folded.shape == (2, want.shape[1] * 32, want.shape[2] * 24, 3)
  got = conv(folded, kernel, (32, 24))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.abs(want).max()))
  # And the kernel's gradient: what a train step takes from either path.
  grad = lambda f: jax.grad(lambda k: jnp.sum(jnp.sin(f(k))))(kernel)
  want_grad = grad(lambda k: conv(images, resize_patch_embed(k, patch, method), patch))
  np.testing.assert_allclose(grad(lambda k: conv(folded, k, (32, 24))), want_grad, rtol=0,
                             atol=1e-4 * float(jnp.abs(want_grad).max()))


def test_fold_is_chosen_for_coarse_grids_and_small_batches_only():
  shape = (32, 32, 3, 384)
  cheaper = lambda q, batch: resize.fold_is_cheaper(shape, (q, q), batch * (240 // q) ** 2)
  assert all(cheaper(q, b) for q in (48, 40) for b in (1, 8, 4096))  # patches > kernel
  assert cheaper(30, 1) and not cheaper(30, 4)  # a 30 px kernel is cheap to make
  assert not any(cheaper(q, b) for q in (24, 16, 8) for b in (1, 4096))
  with pytest.raises(UserError, match="norm"):
    resize.fold_into_patches(jnp.zeros((1, 48, 48, 3)), (32, 32), (48, 48), "norm")
