"""The dense pp ops keep the mask aligned with the image, eagerly and inside tf.data.

The test image is made of constant 8x8 blocks of distinct grey values and its mask
is a function of the pixel (`mask_of`): whatever an op does to the pair, wherever the
image still shows one of the block values, the mask must be that value's label.
"""
import numpy as np
import pytest
import tensorflow as tf

from flexivit_jax.data import get_pp_fn, preprocess


def run_both(pp, ex):
  """The op eagerly and inside tf.data: equal outputs, returned as numpy."""
  eager = {k: v.numpy() for k, v in get_pp_fn(pp)({k: tf.constant(v)
                                                   for k, v in ex.items()}).items()}
  ds = tf.data.Dataset.from_tensors(ex).map(get_pp_fn(pp))
  graph = next(iter(ds.as_numpy_iterator()))
  assert eager.keys() == graph.keys()
  for k in eager:
    np.testing.assert_array_equal(eager[k], graph[k], err_msg=f"{pp}: key {k}")
  return eager


def seed(a, b=0):
  return np.array([a, b], np.int64)

BLOCK = 8


def block_image(h=24, w=32):
  """(h, w, 3) uint8 of 8x8 blocks, each block a distinct value (not 255)."""
  rows, cols = np.arange(h) // BLOCK, np.arange(w) // BLOCK
  values = (rows[:, None] * (w // BLOCK) + cols[None, :]) * 20 + 3
  assert values.max() < 255
  return np.repeat(values[..., None], 3, axis=-1).astype(np.uint8)


def mask_of(image):
  """The label of a pixel: a function of its value, (H, W, 1) uint8 in 0..7."""
  return (image[..., :1].astype(np.int32) // 30).astype(np.uint8)


def example(s=0, h=24, w=32):
  img = block_image(h, w)
  return {"image": img, "mask": mask_of(img), "_seed": seed(s)}


def assert_aligned(out, strict=True):
  """The mask is `mask_of` the image: at every pixel (`strict`: crops and flips move
  pixels, never blend them), or where resizing blended nothing (a block's interior: the
  pixel equals its 8 neighbours, and the mask's nearest sample is in the same block)."""
  image, mask = out["image"], out["mask"]
  assert image.shape[:2] == mask.shape[:2]
  if strict:
    assert np.isin(image, np.unique(block_image())).all()
    np.testing.assert_array_equal(mask, mask_of(image))
    return
  grey = np.pad(image[..., 0].astype(int), 1, mode="edge")
  h, w = image.shape[:2]
  interior = np.ones((h, w), bool)
  for dy in (0, 1, 2):
    for dx in (0, 1, 2):
      interior &= grey[dy:dy + h, dx:dx + w] == grey[1:h + 1, 1:w + 1]
  assert interior.mean() > 0.1
  np.testing.assert_array_equal(mask[interior], mask_of(image)[interior])


@pytest.mark.parametrize("s", range(6))
def test_random_crop_and_flip_keep_the_mask_aligned(s):
  out = run_both("dense_flip_lr|dense_random_crop((13, 9))", example(s))
  assert out["image"].shape == (13, 9, 3) and out["mask"].shape == (13, 9, 1)
  assert_aligned(out)


def test_flip_flips_both_on_some_seeds_only():
  flipped = [not np.array_equal(run_both("dense_flip_lr", example(s))["image"], block_image())
             for s in range(12)]
  assert any(flipped) and not all(flipped)
  for s in range(12):
    assert_aligned(run_both("dense_flip_lr", example(s)))


@pytest.mark.parametrize("pp,shape", [("dense_resize((48, 64))", (48, 64)),
                                      ("dense_resize((12, 16))", (12, 16)),
                                      ("dense_resize_small(48)", (48, 64)),
                                      ("dense_resize_small(24, 0.5, 2.0)", None)])
def test_resizes_keep_the_mask_aligned_and_nearest(pp, shape):
  out = run_both(pp, example(3))
  if shape:
    assert out["image"].shape[:2] == shape
  # Bilinear blends values at block borders; the mask is nearest: only its own labels.
  assert set(np.unique(out["mask"])) <= set(np.unique(mask_of(block_image())))
  assert_aligned(out, strict=False)


def test_resize_small_random_scale_varies_with_the_seed():
  sizes = {run_both("dense_resize_small(24, 0.5, 2.0)", example(s))["image"].shape[:2]
           for s in range(8)}
  assert len(sizes) > 2 and all(12 <= min(hw) <= 48 for hw in sizes)


def test_pad_fills_the_mask_with_the_ignore_label():
  out = run_both("dense_random_crop(20)|dense_pad((30, 40), mask_value=255)", example(1))
  assert out["image"].shape == (30, 40, 3) and out["mask"].shape == (30, 40, 1)
  assert (out["mask"][20:] == 255).all() and (out["mask"][:, 20:] == 255).all()
  assert (out["image"][20:] == 0).all()
  assert_aligned({k: out[k][:20, :20] for k in ("image", "mask")})


def test_central_crop_and_seg_labels():
  out = run_both("dense_central_crop((8, 12))|seg_labels()", example())
  np.testing.assert_array_equal(out["image"], block_image()[8:16, 10:22])
  assert out["labels"].dtype == np.int32 and out["labels"].shape == (8, 12)
  np.testing.assert_array_equal(out["labels"], mask_of(block_image())[8:16, 10:22, 0])


def test_seg_labels_offset_maps_zero_and_padding_to_ignore():
  mask = np.array([[0, 1, 2], [150, 255, 3]], np.uint8)[..., None]
  out = run_both("seg_labels(offset=1, ignore_label=255)", {"mask": mask})
  np.testing.assert_array_equal(out["labels"], [[255, 0, 1], [149, 255, 2]])


def test_dense_ops_are_registered_and_check_their_arguments():
  for name in ("dense_resize", "dense_resize_small", "dense_random_crop", "dense_central_crop",
               "dense_flip_lr", "dense_pad", "seg_labels"):
    assert name in preprocess.known_ops()
  with pytest.raises(ValueError, match="dense_resize_small.*min_scale"):
    preprocess.get_pp_fn("dense_resize_small(8, 2.0, 1.0)")
  with pytest.raises(ValueError, match="seg_labels.*offset"):
    preprocess.get_pp_fn("seg_labels(offset=-1)")
  with pytest.raises(KeyError, match="'mask'"):
    run_both("dense_flip_lr", {"image": block_image(), "_seed": seed(0)})
