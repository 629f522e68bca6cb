"""Numeric tests of the pp ops, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

from flexivit_jax.data import get_pp_fn
from flexivit_jax.data import ops
from flexivit_jax.data import preprocess


def run_eager(pp, ex):
  out = get_pp_fn(pp)({k: tf.constant(v) for k, v in ex.items()})
  return {k: v.numpy() for k, v in out.items()}


def run_tfdata(pp, ex):
  ds = tf.data.Dataset.from_tensors(ex).map(get_pp_fn(pp))
  return next(iter(ds.as_numpy_iterator()))


def run_both(pp, ex):
  a, b = run_eager(pp, ex), run_tfdata(pp, ex)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{pp}: key {k}")
  return a


def rand_image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def seed(a, b=0):
  return np.array([a, b], np.int64)


def test_decode_png_and_passthrough():
  img = rand_image(5, 7)
  png = tf.io.encode_png(img).numpy()
  out = run_both("decode", {"image": png})
  np.testing.assert_array_equal(out["image"], img)
  assert out["image"].dtype == np.uint8
  out = run_both("decode", {"image": img})
  np.testing.assert_array_equal(out["image"], img)
  out = run_both('decode(key="x", outkey="y")', {"x": png})
  np.testing.assert_array_equal(out["y"], img)


@pytest.mark.parametrize("size,hw", [(6, (6, 6)), ((5, 11), (5, 11)),
                                     (20, (20, 20))])
def test_resize(size, hw):
  img = rand_image(10, 14)
  out = run_both(f"resize({size!r})", {"image": img})["image"]
  ref = tf.image.resize(img, hw, method="bilinear", antialias=False)
  ref = tf.cast(tf.clip_by_value(ref, 0, 255), tf.uint8).numpy()
  assert out.dtype == np.uint8 and out.shape == (*hw, 3)
  np.testing.assert_array_equal(out, ref)
  # Float input stays float and equals tf.image.resize exactly.
  fimg = img.astype(np.float32) / 7
  out = run_both(f"resize({size!r})", {"image": fimg})["image"]
  np.testing.assert_array_equal(out, tf.image.resize(fimg, hw).numpy())


def test_resize_small_keeps_aspect():
  out = run_both("resize_small(5)", {"image": rand_image(10, 20)})["image"]
  assert out.shape == (5, 10, 3) and out.dtype == np.uint8
  out = run_both("resize_small(8)", {"image": rand_image(30, 12)})["image"]
  assert out.shape == (20, 8, 3)
  # A constant image stays constant (area averaging).
  const = np.full((12, 24, 3), 77, np.uint8)
  out = run_both("resize_small(6)", {"image": const})["image"]
  assert out.shape == (6, 12, 3) and (out == 77).all()


def test_central_crop():
  img = rand_image(7, 9)
  out = run_both("central_crop(3)", {"image": img})["image"]
  np.testing.assert_array_equal(out, img[2:5, 3:6])
  out = run_both("central_crop((4, 2))", {"image": img})["image"]
  np.testing.assert_array_equal(out, img[1:5, 3:5])


def test_flip_lr_deterministic_and_flips():
  img = rand_image(4, 6)
  seen = set()
  for s in range(16):
    out = run_both("flip_lr", {"image": img, "_seed": seed(s)})["image"]
    again = run_eager("flip_lr", {"image": img, "_seed": seed(s)})["image"]
    np.testing.assert_array_equal(out, again)
    if np.array_equal(out, img):
      seen.add("same")
    else:
      np.testing.assert_array_equal(out, img[:, ::-1])
      seen.add("flipped")
  assert seen == {"same", "flipped"}


def _locate(crop, img_ids):
  """Top-left position of `crop` (of unique ids) inside img_ids."""
  r, c = np.argwhere(img_ids == crop[0, 0])[0]
  np.testing.assert_array_equal(
      crop, img_ids[r:r + crop.shape[0], c:c + crop.shape[1]])
  return r, c


def test_inception_crop():
  h, w = 40, 30
  ids = np.arange(h * w, dtype=np.int32).reshape(h, w)
  img = np.stack([ids] * 3, -1)
  shapes = set()
  for s in range(6):
    ex = {"image": img, "_seed": seed(s, 3)}
    out = run_both("inception_crop", ex)["image"]
    again = run_eager("inception_crop", ex)["image"]
    np.testing.assert_array_equal(out, again)  # deterministic
    _locate(out[..., 0], ids)  # a true sub-window of the image
    area = out.shape[0] * out.shape[1] / (h * w)
    assert 0.05 - 1e-2 <= area <= 1.0
    shapes.add(out.shape)
  assert len(shapes) > 1  # other seeds give other crops
  out = run_both("inception_crop(16)", {"image": rand_image(40, 30),
                                        "_seed": seed(1)})["image"]
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  out = run_both("inception_crop((8, 12), area_min=50)",
                 {"image": rand_image(40, 30), "_seed": seed(1)})["image"]
  assert out.shape == (8, 12, 3)


def test_random_ops_get_distinct_subseeds():
  # Two flips at different positions use different sub-seeds: over seeds,
  # the composition is not always the identity.
  img = rand_image(3, 5)
  results = {np.array_equal(run_eager("flip_lr|flip_lr",
                                      {"image": img, "_seed": seed(s)})
                            ["image"], img) for s in range(12)}
  assert results == {True, False}


def test_decode_jpeg_and_inception_crop():
  img = rand_image(32, 24)
  png = tf.io.encode_png(img).numpy()
  jpg = tf.io.encode_jpeg(img, quality=100).numpy()
  for s in range(3):
    sd = seed(s, 9)
    ref = run_eager("inception_crop", {"image": img, "_seed": sd})["image"]
    # PNG path == decode + inception_crop (same window, exact pixels).
    out = run_both("decode_jpeg_and_inception_crop",
                   {"image": png, "_seed": sd})["image"]
    np.testing.assert_array_equal(out, ref)
    # Decoded input: crop only.
    out = run_both("decode_jpeg_and_inception_crop",
                   {"image": img, "_seed": sd})["image"]
    np.testing.assert_array_equal(out, ref)
    # JPEG path: same window, fused decode of the crop.
    out = run_both("decode_jpeg_and_inception_crop",
                   {"image": jpg, "_seed": sd})["image"]
    assert out.shape == ref.shape
    # Position 0 in both pp strings -> the same sub-seed, same crop window.
    diff = np.abs(out.astype(int) - run_eager(
        "inception_crop", {"image": tf.io.decode_jpeg(jpg).numpy(),
                           "_seed": sd})["image"].astype(int))
    assert diff.mean() < 2.0
  out = run_both("decode_jpeg_and_inception_crop(12)",
                 {"image": jpg, "_seed": seed(5)})["image"]
  assert out.shape == (12, 12, 3)


def test_value_range():
  img = np.array([[[0, 255, 51]]], np.uint8)
  out = run_both("value_range(-1, 1)", {"image": img})["image"]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-1.0, 1.0, -0.6]]], atol=1e-6)
  out = run_both("value_range(0, 1)", {"image": img})["image"]
  np.testing.assert_allclose(out, [[[0.0, 1.0, 0.2]]], atol=1e-6)
  out = run_both("value_range(0, 1, 0, 100)",
                 {"image": np.float32([[[50.0]]])})["image"]
  np.testing.assert_allclose(out, [[[0.5]]])


def test_onehot():
  out = run_both("onehot(3)", {"labels": np.int64(1), "label": np.int64(0)})
  np.testing.assert_array_equal(out["labels"], [0, 1, 0])  # default key: labels
  np.testing.assert_array_equal(out["label"], 0)
  out = run_both("onehot(5)", {"label": np.int64(3)})  # fallback: label
  np.testing.assert_array_equal(out["label"], [0, 0, 0, 1, 0])
  assert out["label"].dtype == np.float32
  out = run_both('onehot(4, key="y", key_result="labels", on=0.9, off=0.1)',
                 {"y": np.int64(0)})
  np.testing.assert_allclose(out["labels"], [0.9, 0.1, 0.1, 0.1])
  np.testing.assert_array_equal(out["y"], 0)
  out = run_both("onehot(4)", {"label": np.int64([0, 2])})  # multi-label
  np.testing.assert_array_equal(out["label"], [1, 0, 1, 0])


def test_copy_and_keep():
  ex = {"image": rand_image(2, 2), "label": np.int64(1), "x": np.float32(2)}
  out = run_both('copy("label", "y")|keep("image", "y")', ex)
  assert sorted(out) == ["image", "y"] and out["y"] == 1
  out = run_both("copy(inkey='x', outkey='z')", ex)
  assert sorted(out) == ["image", "label", "x", "z"]
  # As the reference: keys the example lacks are skipped.
  out = run_both('keep("image", "nope", "x")', ex)
  assert sorted(out) == ["image", "x"]


def test_paper_pp_strings_parse_and_run():
  train = ('decode|inception_crop|flip_lr|resize(240)|value_range(-1,1)|'
           'onehot(1000, key="label", key_result="labels")|'
           'keep("image","labels")')
  ev = ('decode|resize(272)|central_crop(240)|value_range(-1,1)|'
        'onehot(1000, key="label", key_result="labels")|keep("image","labels")')
  jpg = tf.io.encode_jpeg(rand_image(50, 70)).numpy()
  for pp in (train, ev):
    out = run_both(pp, {"image": jpg, "label": np.int64(7),
                        "_seed": seed(1)})
    assert out["image"].shape == (240, 240, 3)
    assert out["image"].dtype == np.float32
    assert -1 <= out["image"].min() and out["image"].max() <= 1
    assert out["labels"].argmax() == 7


@pytest.mark.parametrize("pp,match", [
    ("decode|not_an_op(3)", r"Unknown pp op 'not_an_op'.*Known ops:.*resize"),
    ("resize(4, 5, 6, 7, 8, 9, 10)", r"'resize'.*Allowed arguments: resize\(size"),
    ("resize(sz=4)", r"'resize'.*Allowed arguments: resize\(size"),
    ("resize", r"'resize'.*Allowed"),
    ("value_range(-1, 1, bogus=3)", r"'value_range'.*Allowed.*vmin=-1, vmax=1"),
    ("onehot(-3)", r"'onehot'.*depth"),
    ("resize((1, 2, 3))", r"'resize'.*size"),
    ("resize(4", r"Cannot parse"),
    ("resize(x + 1)", r"'resize'.*literals"),
    ("value_range(-1, 1, [0, 0], [1, 1, 1])", r"'value_range'.*channels"),
    ("value_range(-1, 1, 'a')", r"'value_range'.*in_min"),
    ("value_range(-1, 1, 3, 3)", r"'value_range'.*empty"),
    ("resize_small(0)", r"'resize_small'.*positive"),
    ("randaug(-1)", r"'randaug'.*num_layers"),
    ("randaug(2, 'x')", r"'randaug'.*magnitude"),
])
def test_parse_errors(pp, match):
  with pytest.raises(ValueError, match=match):
    get_pp_fn(pp)


def test_registry_lists_required_ops():
  for name in ["decode", "decode_jpeg_and_inception_crop", "inception_crop",
               "flip_lr", "resize", "resize_small", "central_crop",
               "value_range", "onehot", "copy", "keep", "randaug"]:
    assert name in preprocess.known_ops()


@pytest.mark.parametrize("target", [240, 256, 272])
def test_resize_small_sizes_match_float32_formula_for_every_shape(target):
  h, w = np.meshgrid(np.arange(1, 1025), np.arange(1, 1025), indexing="ij")
  got_h, got_w = ops.small_side_size(tf.constant(h), tf.constant(w), target)
  ratio = np.float32(target) / np.minimum(h, w).astype(np.float32)
  want_h = np.round(h.astype(np.float32) * ratio).astype(np.int32)
  want_w = np.round(w.astype(np.float32) * ratio).astype(np.int32)
  np.testing.assert_array_equal(got_h.numpy(), want_h)
  np.testing.assert_array_equal(got_w.numpy(), want_w)


def test_resize_small_224x231():
  out = run_both("resize_small(240)", {"image": rand_image(224, 231)})["image"]
  assert out.shape == (240, 247, 3)  # float64 rounding would give 248


def test_value_range_defaults_keys_and_per_channel():
  img = np.array([[[0, 255, 51]]], np.uint8)
  out = run_both("value_range", {"image": img})["image"]
  np.testing.assert_allclose(out, [[[-1.0, 1.0, -0.6]]], atol=1e-6)
  out = run_both('value_range(key="prof")', {"image": img, "prof": img})
  assert out["image"].dtype == np.uint8 and out["prof"].dtype == np.float32
  out = run_both('value_range(0, 1, inkey="x", outkey="y")', {"x": img})
  np.testing.assert_allclose(out["y"], [[[0.0, 1.0, 0.2]]], atol=1e-6)
  out = run_both("value_range(0, 1, [0, 5, 51], [255, 255, 102])", {"image": img})
  np.testing.assert_allclose(out["image"], [[[0.0, 1.0, 0.0]]], atol=1e-6)


def test_central_crop_default_is_square_and_empty_ops_skip():
  img = rand_image(7, 9)
  out = run_both("central_crop||", {"image": img})["image"]
  np.testing.assert_array_equal(out, img[:, 1:8])


def _randaug_ops():
  from flexivit_jax.data import randaug
  return randaug


def test_randaug_deterministic_per_seed_and_uint8():
  img = rand_image(33, 47)
  fn = get_pp_fn("randaug(2, 10)")  # One instance: its graph is traced once.
  seeds = np.stack([seed(s) for s in range(6)])
  eager = [fn({"image": tf.constant(img), "_seed": tf.constant(sd)})["image"].numpy()
           for sd in seeds]
  ds = tf.data.Dataset.from_tensor_slices({"image": np.stack([img] * 6), "_seed": seeds})
  for a, b in zip(eager, ds.map(fn).as_numpy_iterator()):
    np.testing.assert_array_equal(a, b["image"])
    assert a.shape == img.shape and a.dtype == np.uint8
  np.testing.assert_array_equal(
      eager[0], fn({"image": tf.constant(img), "_seed": tf.constant(seeds[0])})["image"])
  assert len({a.tobytes() for a in eager}) > 3
  out = run_both("randaug(0, 10)", {"image": img, "_seed": seed(0)})["image"]
  np.testing.assert_array_equal(out, img)


def test_randaug_pixel_ops_match_pil():
  import PIL.Image
  import PIL.ImageOps
  ra = _randaug_ops()
  img = rand_image(20, 30, seed=3)
  img[:, :, 1] = img[:, :, 1] // 2 + 40  # a channel that does not span 0..255
  pil = PIL.Image.fromarray(img)
  s = tf.constant(seed(0))
  table = ra.op_table(10)
  assert sorted(table) == sorted(ra.OP_NAMES) and len(ra.OP_NAMES) == 16
  np.testing.assert_array_equal(table["Invert"](img, s), 255 - img)
  np.testing.assert_array_equal(table["Equalize"](img, s), np.asarray(PIL.ImageOps.equalize(pil)))
  np.testing.assert_array_equal(table["Posterize"](img, s),
                                np.asarray(PIL.ImageOps.posterize(pil, 4)))
  # Magnitude 10: threshold int(256) becomes uint8 0, so Solarize inverts all.
  np.testing.assert_array_equal(table["Solarize"](img, s), 255 - img)
  np.testing.assert_array_equal(ra.op_table(5)["Solarize"](img, s),
                                np.asarray(PIL.ImageOps.solarize(pil, 128)))
  np.testing.assert_array_equal(
      table["SolarizeAdd"](img, s), np.where(img < 128, np.minimum(img.astype(int) + 110, 255),
                                             img))
  lo = img.min(axis=(0, 1)).astype(np.float32)
  hi = img.max(axis=(0, 1)).astype(np.float32)
  scale = np.float32(255) / (hi - lo)
  want = np.clip(img.astype(np.float32) * scale - lo * scale, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(table["AutoContrast"](img, s), want)
  # Brightness 1.9: extrapolate from black, clip.
  np.testing.assert_array_equal(
      table["Brightness"](img, s),
      np.clip(img.astype(np.float32) * np.float32(1.9), 0, 255).astype(np.uint8))


def test_randaug_geometric_ops():
  ra = _randaug_ops()
  img = rand_image(12, 16, seed=5)
  shifted = set()
  for k in range(8):
    s = tf.constant(seed(k))
    out = ra.op_table(1)["TranslateX"](img, s).numpy()  # 10 px
    if np.array_equal(out[:, :6], img[:, 10:]):
      assert (out[:, 6:] == 128).all()
      shifted.add("left")
    else:
      np.testing.assert_array_equal(out[:, 10:], img[:, :6])
      assert (out[:, :10] == 128).all()
      shifted.add("right")
    cut = ra.op_table(10)["Cutout"](img, s).numpy()
    box = (cut != img).any(-1) | (img == 128).all(-1)
    assert (cut[box] == 128).all() and box.sum() <= 80 * 80
  assert shifted == {"left", "right"}
  np.testing.assert_array_equal(ra.rotate(img, 0.0), img)
  rot = ra.rotate(np.ascontiguousarray(img[:, :12]), 90.0).numpy()  # square: exact
  np.testing.assert_array_equal(rot, np.rot90(img[:, :12]))
