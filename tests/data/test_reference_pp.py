"""The reference's FlexiViT pp strings, run unchanged on real JPEGs.

Deterministic strings are compared with outputs built here from PIL/numpy and
single tf.image primitives; random strings are checked for keys, shapes,
dtypes and value ranges (and determinism per seed).
"""
import functools
import io
import runpy

import numpy as np
import PIL.Image
import pytest
import skimage.data
import tensorflow as tf

from conftest import DATA
from flexivit_jax.data import get_pp_fn

_STRINGS = runpy.run_path(str(DATA / "reference_pp_strings.py"))
REFERENCE_PP, RANDOM = _STRINGS["REFERENCE_PP"], _STRINGS["RANDOM"]
SHAPES = ((224, 231), (240, 240), (300, 200), (181, 417))


def _jpeg(h, w, photo):
  img = PIL.Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
  side = min(img.size)
  img = img.crop((0, 0, side, side)).resize((w, h), PIL.Image.BICUBIC)
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=90, subsampling=0)  # 4:4:4: decoders agree
  return buf.getvalue()


@pytest.fixture(scope="module")
def examples():
  photos = ("astronaut", "coffee", "chelsea", "rocket")
  return [{"image": _jpeg(h, w, p), "label": np.int64(7 * i + 1),
           "real_label": np.array([3, 900][:i % 3], np.int64),  # 0, 1 or 2 labels
           "labels": np.array([5, 21000], np.int64), "_seed": np.array([i, 4], np.int64)}
          for i, ((h, w), p) in enumerate(zip(SHAPES, photos))]


# ----------------------------------------------------------------------------
# Independent expectations.


def _decode(jpeg):
  # TF's (and so the reference's) JPEG decoder uses libjpeg's fast integer
  # IDCT by default; test_decoders_agree ties it to PIL.
  return tf.io.decode_jpeg(jpeg, channels=3).numpy()


def _to_uint8(x):
  return np.clip(np.asarray(x), 0, 255).astype(np.uint8)


def _resize(img, size):
  return _to_uint8(tf.image.resize(img, (size, size), method="bilinear", antialias=False))


def _small_hw(h, w, s):
  ratio = np.float32(s) / np.float32(min(h, w))
  return int(np.round(np.float32(h) * ratio)), int(np.round(np.float32(w) * ratio))


def _resize_small(img, s):
  return _to_uint8(tf.image.resize(img, _small_hw(*img.shape[:2], s), method="area"))


def _crop(img, s):
  top, left = (img.shape[0] - s) // 2, (img.shape[1] - s) // 2
  return img[top:top + s, left:left + s]


def _range(img):
  return np.float32(-1) + img.astype(np.float32) / np.float32(255) * np.float32(2)


def _hot(ids, depth):
  out = np.zeros(depth, np.float32)
  out[np.atleast_1d(ids)] = 1.0
  return out


def _branch(img, resize, size, crop):
  return _range(_crop(resize(img, size), crop))


def expected(name, ex):
  img = _decode(ex["image"])
  family, use = name.split("_eval_") if "_eval_" in name else (name, "")
  if name == "deit3_dist":
    return {"image": _branch(img, _resize, 272, 240), "prof": _branch(img, _resize, 432, 384)}
  if name == "i21k_distill_dist":
    return {"image": _branch(img, _resize_small, 272, 240),
            "prof": _branch(img, _resize_small, 256, 224)}
  label = {"real": ex["real_label"], "i21k": ex["labels"]}.get(use.split("_")[-1], ex["label"])
  labels = _hot(label, 21843 if use.endswith("i21k") else 1000)
  if use.startswith("student"):
    return {"image": _branch(img, _resize, 272, 240), "labels": labels}
  if use.startswith("teacher"):
    size, crop = (432, 384) if family == "deit3" else (256, 224)
    kept = _crop(_resize(img, size), crop)
    return {"image": kept, "prof": _range(kept), "labels": labels}
  assert family == "i21k_sup", name
  return {"image": _branch(img, _resize_small, 272, 240), "labels": labels}


@functools.lru_cache(maxsize=None)
def _pp_fn(pp):
  return get_pp_fn(pp)  # Reused: randaug's graph is traced once per instance.


def _run(pp, ex, in_tfdata):
  fn = _pp_fn(pp)
  if in_tfdata:
    ds = tf.data.Dataset.from_tensors(ex).map(fn)
    return next(iter(ds.as_numpy_iterator()))
  return {k: v.numpy() for k, v in fn({k: tf.constant(v) for k, v in ex.items()}).items()}


def test_sixteen_distinct_strings():
  assert len(set(REFERENCE_PP.values())) == 16


def test_decoders_agree(examples):
  for ex in examples:
    pil = np.asarray(PIL.Image.open(io.BytesIO(ex["image"])).convert("RGB"))
    accurate = tf.io.decode_jpeg(ex["image"], channels=3, dct_method="INTEGER_ACCURATE")
    np.testing.assert_array_equal(accurate.numpy(), pil)
    fast = _decode(ex["image"]).astype(int)
    assert np.abs(fast - pil).mean() < 2.0 and np.abs(fast - pil).max() <= 16


@pytest.mark.parametrize("name", sorted(set(REFERENCE_PP) - set(RANDOM)))
def test_deterministic_string(name, examples):
  pp = REFERENCE_PP[name]
  for i, ex in enumerate(examples):
    want = expected(name, ex)
    got = _run(pp, ex, in_tfdata=i % 2 == 1)  # half eagerly, half in tf.data
    assert sorted(got) == sorted(want), (name, sorted(got))
    for k in want:
      assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (name, k)
      np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6, err_msg=f"{name}:{k}")


def test_real_label_rows(examples):
  """ImageNet-ReaL: an image with no label gives an all-zero row."""
  rows = [_run(REFERENCE_PP["i21k_sup_eval_real"], ex, False)["labels"] for ex in examples[:3]]
  assert [r.sum() for r in rows] == [0, 1, 2]


@pytest.mark.parametrize("name", RANDOM)
def test_random_string(name, examples):
  pp = REFERENCE_PP[name]
  prof_hw = {"deit3_train": 384, "i21k_distill_train": 224}.get(name)
  depth = 1000 if name.startswith("deit3") else 21843
  for i, ex in enumerate(examples):
    got = _run(pp, ex, in_tfdata=i % 2 == 0)
    assert sorted(got) == sorted(["image", "labels"] + (["prof"] if prof_hw else []))
    assert got["image"].shape == (240, 240, 3) and got["image"].dtype == np.float32
    assert -1 <= got["image"].min() and got["image"].max() <= 1
    if prof_hw:
      assert got["prof"].shape == (prof_hw, prof_hw, 3) and got["prof"].dtype == np.float32
      lo, hi = -1, 1
      if name == "i21k_distill_train":
        # The reference string resizes "image" (already in [-1, 1]) into
        # "prof" with resize(224, outkey="prof"), then value_range maps
        # [0, 255] again: prof ends within 2/255 of -1, as in big_vision.
        lo, hi = -1 - 2 / 255 - 1e-6, -1 + 2 / 255 + 1e-6
      assert lo <= got["prof"].min() and got["prof"].max() <= hi
    assert got["labels"].shape == (depth,) and got["labels"].dtype == np.float32
    want = ex["label"] if depth == 1000 else ex["labels"]
    np.testing.assert_array_equal(got["labels"], _hot(want, depth))
  ex = examples[0]
  np.testing.assert_array_equal(_run(pp, ex, False)["image"], _run(pp, ex, True)["image"])
  other = _run(pp, {**ex, "_seed": np.array([99, 4], np.int64)}, False)["image"]
  assert not np.array_equal(other, _run(pp, ex, False)["image"])
