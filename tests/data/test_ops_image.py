"""big_vision's remaining image ops against hand-built expectations, eagerly and in tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from flexivit_jax.data import ops_image, preprocess
from flexivit_jax.errors import UserError
from tests.data.test_ops import run_both, seed

SHAPES = [(10, 14, 3), (17, 9, 3), (12, 12, 1)]


def image(shape, dtype, seed_=0):
  x = np.random.default_rng(seed_).integers(0, 256, shape)
  return (x / 255).astype(dtype) if dtype == np.float32 else x.astype(dtype)


def crop_at(x, out):
  """The (top, left) of `out` inside `x`, or None."""
  h, w = out.shape[:2]
  for top in range(x.shape[0] - h + 1):
    for left in range(x.shape[1] - w + 1):
      if np.array_equal(x[top:top + h, left:left + w], out):
        return top, left
  return None


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_resize_long_keeps_aspect_and_dtype(shape, dtype):
  x = image(shape, dtype)
  out = run_both("resize_long(8)", {"image": x})["image"]
  h, w = shape[:2]
  want_hw = (round(h * 8 / max(h, w)), round(w * 8 / max(h, w)))
  assert out.shape == (*want_hw, shape[2]) and out.dtype == dtype
  ref = tf.image.resize(x, want_hw, method="area", antialias=True)
  if dtype == np.uint8:
    ref = tf.cast(tf.clip_by_value(ref, 0, 255), tf.uint8)
  np.testing.assert_allclose(out, ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int32])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_crop_is_a_window_of_the_image(shape, dtype):
  x = image(shape, dtype)
  corners = set()
  for s in range(12):
    out = run_both("random_crop((5, 4))", {"image": x, "_seed": seed(s)})["image"]
    assert out.shape == (5, 4, shape[2]) and out.dtype == dtype
    corner = crop_at(x, out)
    assert corner is not None
    corners.add(corner)
  assert len(corners) > 3  # Not always the same window.
  a = run_both("random_crop(6)", {"image": x, "_seed": seed(2)})["image"]
  b = run_both("random_crop(6)", {"image": x, "_seed": seed(2)})["image"]
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_random_flip_lr_flips_about_half(shape, dtype):
  x = image(shape, dtype)
  flipped = 0
  for s in range(40):
    out = run_both("random_flip_lr", {"image": x, "_seed": seed(s)})["image"]
    if np.array_equal(out, x[:, ::-1]):
      flipped += 1
    else:
      np.testing.assert_array_equal(out, x)
  assert 8 <= flipped <= 32


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_vgg_value_range(dtype):
  x = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(dtype)
  out = run_both("vgg_value_range", {"image": x})["image"]
  want = (x.astype(np.float32) - np.array(ops_image.VGG_MEAN, np.float32)) / np.array(
      ops_image.VGG_STD, np.float32)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
  out = run_both("vgg_value_range(mean=[1], std=[2])", {"image": x[..., :1]})["image"]
  np.testing.assert_allclose(out, (x[..., :1].astype(np.float32) - 1) / 2, rtol=1e-6)
  with pytest.raises(UserError, match="std"):
    preprocess.get_pp_fn("vgg_value_range(mean=[1, 2], std=[1])")


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int32])
def test_clip_value_range(dtype):
  x = np.array([[[0], [1], [3]], [[200], [2], [1]]], dtype)
  out = run_both("clip_value_range(1, 2.5)", {"image": x})["image"]
  np.testing.assert_array_equal(out, np.clip(x.astype(np.float32), 1, 2.5))
  with pytest.raises(UserError, match="above"):
    preprocess.get_pp_fn("clip_value_range(2, 1)")


@pytest.mark.parametrize("shape", SHAPES)
def test_convert_to_video(shape):
  x = image(shape, np.uint8)
  out = run_both("convert_to_video(3)", {"image": x})["image"]
  assert out.shape == (3, *shape)
  for frame in out:
    np.testing.assert_array_equal(frame, x)


def test_transfer_pp_string_runs():
  """A big_vision transfer-style train string built from the new ops."""
  x = image((20, 30, 3), np.uint8)
  pp = ("resize_long(24)|random_crop(12)|random_flip_lr|vgg_value_range|"
        "clip_value_range(-3, 3)|setdefault('labels', 1)")
  out = run_both(pp, {"image": x, "_seed": seed(0)})
  assert out["image"].shape == (12, 12, 3) and out["labels"] == 1
  assert np.abs(out["image"]).max() <= 3
