"""Predictor (cached resized kernels), XLA-counted GFLOPs and the compute-budget chooser."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexivit_jax.evaluators import predict
from flexivit_jax.models import resize
from flexivit_jax.errors import UserError
from flexivit_jax.models.vit import FlexiViT

TINY = dict(num_classes=10, width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=(8, 8),
            posemb_size=(3, 3))
# Big enough that matmuls dominate, as in real ViTs (elementwise ops are a few %).
FLOPS_MODEL = dict(num_classes=10, width=64, depth=2, num_heads=4, mlp_dim=256,
                   patch_size=(8, 8), posemb_size=(6, 6), pool_type="tok")


def init(model, size=24):
  return model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]


def images(n=3, size=24, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


@pytest.mark.parametrize("method", ["pi", "vanilla", "area", "norm"])
@pytest.mark.parametrize("seqhw", [2, 3, 4, 6])
def test_predictor_equals_model_apply(method, seqhw):
  model = FlexiViT(**TINY, resize_method=method, token_norm=2.0 if method == "norm" else None)
  params = init(model)
  x = images()
  want = model.apply({"params": params}, x, seqhw=seqhw)[0]
  got = predict.Predictor(model, params).predict(x, seqhw=seqhw)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_params_at_size_skip_resizing_exactly():
  model = FlexiViT(**TINY)
  params = init(model)
  sized_model, sized = predict.params_at_size(model, params, (6, 6), (4, 4))
  assert sized["embedding"]["kernel"].shape[:2] == (6, 6)
  assert sized["pos_embedding"].shape == (1, 16, 32)
  assert sized_model.posemb_size == (4, 4)
  # Already at the target size: both resizes return their input object.
  assert resize.resample_posemb(sized["pos_embedding"], (4, 4), old_hw=(4, 4)) \
      is sized["pos_embedding"]
  assert resize.pi_resize(sized["embedding"]["kernel"], (6, 6)) is sized["embedding"]["kernel"]


def test_second_call_at_a_size_resizes_nothing(monkeypatch):
  calls = {"kernel": 0, "posemb": 0}

  def counting(name, fn):
    def wrapped(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)
    return wrapped

  monkeypatch.setattr(resize, "_pi_resize", counting("kernel", resize._pi_resize))
  monkeypatch.setattr(resize, "resample_posemb", counting("posemb", resize.resample_posemb))
  model = FlexiViT(**TINY)
  predictor = predict.Predictor(model, init(model))
  x = images()
  predictor.predict(x, seqhw=4)
  first = dict(calls)
  assert first["kernel"] == 1 and first["posemb"] >= 1
  for _ in range(3):
    predictor.predict(x, seqhw=4)
    predictor.predict(x + 1.0, patch_size=6)  # The same size, named by its patch.
  assert calls == first
  predictor.predict(x, seqhw=6)  # A new size: one more kernel resize.
  assert calls["kernel"] == 2


def test_predict_files_preprocesses_like_eval(tmp_path):
  from PIL import Image
  import tensorflow as tf
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
  paths = []
  for i, a in enumerate(arrays):
    paths.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(a).save(paths[-1])
  model = FlexiViT(**TINY)
  predictor = predict.Predictor(model, init(model), pp="decode|resize(24)|value_range(-1, 1)")
  by_hand = np.stack([tf.image.resize(a, (24, 24), "bilinear").numpy() / 127.5 - 1.0
                      for a in arrays])
  np.testing.assert_allclose(predictor.predict_files(paths, seqhw=3),
                             predictor.predict(by_hand, seqhw=3), atol=1e-5)
  with pytest.raises(UserError, match="does not exist"):
    predictor.predict_files([str(tmp_path / "missing.png")], seqhw=3)


def analytic_vit_flops(*, image, seqhw, width, depth, mlp_dim, num_classes, channels=3,
                       cls_token=True):
  """Multiply-adds x2 of the matmuls and convolutions of one ViT forward pass."""
  patch = image // seqhw
  n = seqhw * seqhw + int(cls_token)
  embed = 2 * seqhw * seqhw * patch * patch * channels * width
  attn = 2 * n * width * 3 * width + 2 * 2 * n * n * width + 2 * n * width * width
  mlp = 2 * 2 * n * width * mlp_dim
  return embed + depth * (attn + mlp) + 2 * width * num_classes


def test_gflops_grow_as_the_patch_shrinks_and_match_an_analytic_count():
  model = FlexiViT(**FLOPS_MODEL)
  shapes = jax.eval_shape(lambda: init(model, 48))
  counted = [predict.gflops_per_image(model, shapes, 48, seqhw=s) for s in (3, 4, 6, 8, 12)]
  assert all(a < b for a, b in zip(counted, counted[1:]))
  for s, got in zip((3, 4, 6, 8, 12), counted):
    want = analytic_vit_flops(image=48, seqhw=s, width=64, depth=2, mlp_dim=256,
                              num_classes=10) / 1e9
    assert abs(got - want) / want < 0.10, (s, got, want)


def test_gflops_exclude_the_resize_and_are_per_image():
  model = FlexiViT(**FLOPS_MODEL)
  params = init(model, 48)
  one = predict.gflops_per_image(model, params, 48, seqhw=12)
  four = predict.gflops_per_image(model, params, 48, seqhw=12, batch_size=4)
  assert abs(one - four) / one < 0.02


def test_choose_seqhw_finds_the_finest_grid_within_budget():
  model = FlexiViT(**FLOPS_MODEL)
  shapes = jax.eval_shape(lambda: init(model, 48))
  g = {s: predict.gflops_per_image(model, shapes, 48, seqhw=s) for s in (4, 6, 8, 12)}
  budget = (g[6] + g[8]) / 2
  assert predict.choose_seqhw(model, shapes, 48, max_gflops=budget) == 6
  assert predict.choose_seqhw(model, shapes, 48, max_gflops=g[12] * 1.01,
                              seqhws=[4, 6, 8, 12]) == 12
  with pytest.raises(UserError, match="no grid fits"):
    predict.choose_seqhw(model, shapes, 48, max_gflops=1e-9)
  with pytest.raises(UserError, match="exactly one"):
    predict.choose_seqhw(model, shapes, 48)


def test_choose_seqhw_by_latency():
  model = FlexiViT(**TINY)
  shapes = jax.eval_shape(lambda: init(model))
  assert predict.choose_seqhw(model, shapes, 24, max_ms=1e6, seqhws=[2, 3, 4]) == 4
  with pytest.raises(UserError, match="no grid fits"):
    predict.choose_seqhw(model, shapes, 24, max_ms=1e-6, seqhws=[2, 3, 4])
