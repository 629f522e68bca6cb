"""Tests for flexivit_jax.checkpoints.npz: npz I/O, legacy layouts, load_pretrained."""
from __future__ import annotations

import functools
import os
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from flexivit_jax.checkpoints import npz as ckpt_lib
from flexivit_jax.models import resize

from conftest import REF_CKPT, REF_SEQHWS, reference_model


@pytest.fixture(scope="module")
def params():
  """The reference checkpoint as load_params reads it (conftest's ref_params: plain numpy)."""
  return ckpt_lib.load_params(REF_CKPT)


@functools.lru_cache(maxsize=None)
def _apply_fn(overrides: tuple):
  """Jitted apply per model config: far faster than eager on 2 cores."""
  return jax.jit(reference_model(**dict(overrides)).apply, static_argnames="seqhw")


def _logits(params, images, seqhw, **overrides):
  logits, _ = _apply_fn(tuple(sorted(overrides.items())))({"params": params}, images,
                                                          seqhw=seqhw)
  return np.asarray(logits)


def _init(images, **overrides):
  """Stand-in for model.init: the model's param shapes (eval_shape, no compile), random values."""
  model = reference_model(**overrides)
  shapes = jax.eval_shape(functools.partial(model.init, seqhw=2), jax.random.PRNGKey(0),
                          images[:1, :64, :64])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), shapes["params"])


def _assert_trees_equal(a, b):
  fa, fb = ckpt_lib.flatten(a), ckpt_lib.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_reference_checkpoint_matches_reference_logits(params, ref_outputs):
  for s in REF_SEQHWS:
    got = _logits(params, ref_outputs["images"], s)
    np.testing.assert_allclose(got, ref_outputs[f"logits:seqhw={s}"], rtol=0, atol=1e-4,
                               err_msg=f"seqhw={s}")


def test_round_trip_with_bf16(tmp_path, params):
  tree = dict(params)
  tree["extra"] = {"bf16": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)}
  path = tmp_path / "p.npz"
  ckpt_lib.save_params(path, tree)
  with zipfile.ZipFile(path) as zf:
    with zf.open("extra/bf16.npy") as f:
      major, _ = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if major == 1
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(f)
  assert dtype.kind == "V" and dtype.itemsize == 2 and shape == (2, 3)
  with np.load(path) as raw:  # what big_vision sees
    assert raw["extra/bf16"].dtype.kind == "V"
  loaded = ckpt_lib.load_params(path)
  _assert_trees_equal(loaded, tree)
  assert loaded["extra"]["bf16"].dtype == ml_dtypes.bfloat16


def test_flat_helpers_round_trip(tmp_path):
  flat = {"params/a/b": np.ones((2,), np.float32), "step": np.asarray(7),
          "file": np.zeros(1)}  # 'file' would clash with np.savez's own argument.
  ckpt_lib.save_flat(tmp_path / "s.npz", flat)
  got = ckpt_lib.load_flat(tmp_path / "s.npz")
  assert sorted(got) == sorted(flat) and int(got["step"]) == 7
  assert ckpt_lib.flatten(ckpt_lib.unflatten(flat)) == flat
  with pytest.raises(ValueError, match="both an array and a prefix"):
    ckpt_lib.unflatten({"a": 1, "a/b": 2})


def _legacy(params):
  """The reference params in the old layout: numbered per scope, posemb inside."""
  old = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
  enc = {k: dict(v) for k, v in params["Transformer"].items()}
  for name, block in list(enc.items()):
    if name.startswith("encoderblock_"):
      enc[name] = {"LayerNorm_0": block["LayerNorm_0"],
                   "MultiHeadDotProductAttention_1": block["MultiHeadDotProductAttention_0"],
                   "LayerNorm_2": block["LayerNorm_1"], "MlpBlock_3": block["MlpBlock_0"]}
  enc["posembed_input"] = {"pos_embedding": old.pop("pos_embedding")}
  old["Transformer"] = enc
  return old


def test_legacy_layout_loads(tmp_path, params, ref_outputs):
  path = tmp_path / "old.npz"
  ckpt_lib.save_params(path, _legacy(params))
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in np.load(path).files
  loaded = ckpt_lib.load_params(path)
  _assert_trees_equal(loaded, params)
  np.testing.assert_allclose(_logits(loaded, ref_outputs["images"], 8),
                             ref_outputs["logits:seqhw=8"], rtol=0, atol=1e-4)
  # The other old posemb location.
  alt = _legacy(params)
  alt["Transformer"]["pos_embedding"] = alt["Transformer"].pop("posembed_input")["pos_embedding"]
  ckpt_lib.save_params(path, alt)
  _assert_trees_equal(ckpt_lib.load_params(path), params)


def test_inlined_map_head_moves_under_maphead():
  tree = {"probe": np.zeros((1, 1, 4)), "MlpBlock_0": {"Dense_0": {"kernel": np.zeros(2)}},
          "LayerNorm_0": {"scale": np.ones(4)}, "head": {"bias": np.zeros(2)}}
  fixed = ckpt_lib.fix_legacy_layout(tree)
  assert sorted(fixed) == ["MAPHead_0", "head"]
  assert sorted(fixed["MAPHead_0"]) == ["LayerNorm_0", "MlpBlock_0", "probe"]


def test_training_layouts_and_subkey(tmp_path, params):
  flat = ckpt_lib.flatten(params)
  train = {**{"params/" + k: v for k, v in flat.items()},
           "opt/0/mu/head/bias": np.zeros(10, np.float32), "step": np.asarray(3)}
  ckpt_lib.save_flat(tmp_path / "train.npz", train)
  _assert_trees_equal(ckpt_lib.load_params(tmp_path / "train.npz"), params)
  _assert_trees_equal(ckpt_lib.load_params(f"{tmp_path / 'train.npz'}:params"), params)

  ckpt_lib.save_flat(tmp_path / "old.npz", {"opt/target/" + k: v for k, v in flat.items()})
  _assert_trees_equal(ckpt_lib.load_params(tmp_path / "old.npz"), params)

  sub = ckpt_lib.load_params(f"{REF_CKPT}:Transformer")
  _assert_trees_equal(sub, params["Transformer"])
  with pytest.raises(ValueError, match="no key 'Transformer/nope'"):
    ckpt_lib.load_params(f"{REF_CKPT}:Transformer/nope")


def test_atomic_write_keeps_previous_file(tmp_path, monkeypatch, params):
  path = tmp_path / "ckpt.npz"
  ckpt_lib.save_params(path, params)
  before = path.read_bytes()
  real_write, calls = np.lib.format.write_array, []

  def failing_write(f, arr, **kw):
    calls.append(1)
    if len(calls) == 3:
      f.write(b"\x00" * 100)  # Part of an array hits the disk, then the "crash".
      raise OSError("disk full")
    return real_write(f, arr, **kw)

  monkeypatch.setattr(np.lib.format, "write_array", failing_write)
  with pytest.raises(OSError, match="disk full"):
    ckpt_lib.save_params(path, {"x": np.ones(3)} | params)
  monkeypatch.undo()
  assert len(calls) == 3
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
  _assert_trees_equal(ckpt_lib.load_params(path), params)


def test_truncated_corrupt_missing_and_unknown(tmp_path):
  data = REF_CKPT.read_bytes()
  half = tmp_path / "half.npz"
  half.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated"):
    ckpt_lib.load_params(half)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"this is not a zip file at all")
  with pytest.raises(ValueError, match="truncated or corrupt"):
    ckpt_lib.load_flat(garbage)
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 0xFF  # Inside an array: caught by the zip CRC.
  (tmp_path / "flip.npz").write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="truncated or corrupt"):
    ckpt_lib.load_params(tmp_path / "flip.npz")
  with pytest.raises(ValueError, match="does not exist.*FlexiViT-B i1k"):
    ckpt_lib.load_params(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="'FlexiViT-X i1k' .*does not exist.*ViT-B/30 i21k"):
    ckpt_lib.load_params("FlexiViT-X i1k")


def test_shortcut_resolution_is_offline():
  assert ckpt_lib.resolve_checkpoint("FlexiViT-B i1k") == \
      "gs://big_vision/flexivit/flexivit_b_i1k.npz"
  assert ckpt_lib.resolve_checkpoint("flexivit-l   I1K") == \
      "gs://big_vision/flexivit/flexivit_l_i1k.npz"
  assert ckpt_lib.resolve_checkpoint("ViT-B/16 i21k") == \
      "gs://big_vision/flexivit/vit_b16_i21k_300ep.npz"
  assert len(ckpt_lib.CHECKPOINTS) == 8
  assert all(u.startswith("gs://big_vision/flexivit/") for u in ckpt_lib.CHECKPOINTS.values())
  assert ckpt_lib.resolve_checkpoint("x/y.npz") == os.path.abspath("x/y.npz")
  assert ckpt_lib.resolve_checkpoint("gs://b/x.npz") == "gs://b/x.npz"
  assert ckpt_lib.split_subkey("gs://b/x.npz:params") == ("gs://b/x.npz", "params")
  assert ckpt_lib.split_subkey("gs://b/x.npz") == ("gs://b/x.npz", None)
  assert ckpt_lib.split_subkey("FlexiViT-S i1k:Transformer") == ("FlexiViT-S i1k", "Transformer")


def test_latest_checkpoint(tmp_path, params):
  assert ckpt_lib.latest_checkpoint(tmp_path / "nope") is None
  assert ckpt_lib.latest_checkpoint(tmp_path) is None
  small = {"params/" + k: v for k, v in ckpt_lib.flatten(params).items()}
  for step in (100, 2000):
    ckpt_lib.save_flat(tmp_path / f"checkpoint_{step:09d}.npz",
                       {**small, "step": np.asarray(step)})
  for junk in ("checkpoint_000003000.npz.tmp", ".checkpoint_000004000.npz.abc.tmp",
               "checkpoint_5000.npz", "checkpoint_000006000.npz.partial"):
    (tmp_path / junk).write_bytes(b"PK\x03\x04partial")
  (tmp_path / "checkpoint_000007000.npz").write_bytes(b"PK\x03\x04 cut mid-copy")
  assert ckpt_lib.latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_000002000.npz")
  _assert_trees_equal(ckpt_lib.load_params(tmp_path), params)  # A workdir loads too.


def test_load_pretrained_resamples_posemb(params, ref_outputs):
  init = _init(ref_outputs["images"], posemb_size=(10, 10))
  lines = []
  out, report = ckpt_lib.load_pretrained(init, REF_CKPT, log=lines.append)
  assert report == lines and any("7x7 to 10x10" in r for r in report)
  want = resize.resample_posemb(params["pos_embedding"], (10, 10), rule="load")
  np.testing.assert_allclose(out["pos_embedding"], want, rtol=0, atol=1e-6)
  assert out["pos_embedding"].shape == (1, 100, 48)
  _logits(out, ref_outputs["images"][:1], 10, posemb_size=(10, 10))  # Runs.


def test_load_pretrained_tok_model_and_cls(params, ref_outputs):
  init = _init(ref_outputs["images"], pool_type="tok")
  with pytest.raises(ValueError, match="not the checkpoint 1: cls"):
    ckpt_lib.load_pretrained(init, REF_CKPT, log=None)
  out, report = ckpt_lib.load_pretrained(init, REF_CKPT, dont_load=("cls",), log=None)
  np.testing.assert_array_equal(out["cls"], init["cls"])
  assert "kept init for cls" in report

  # A 50-row posemb (cls row first) into a tok model: row 0 is added to cls.
  cls = np.full((1, 1, 48), 0.5, np.float32)
  row0 = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 1, 48)
  old = {**params, "cls": cls,
         "pos_embedding": np.concatenate([row0, params["pos_embedding"]], axis=1)}
  out, report = ckpt_lib.load_pretrained(init, old, log=None)
  np.testing.assert_allclose(out["cls"], cls + row0)
  np.testing.assert_array_equal(out["pos_embedding"], params["pos_embedding"])
  assert any("added it to cls" in r for r in report)
  # Into a gap model (no cls): the row is dropped and the report says so.
  old.pop("cls")
  out, report = ckpt_lib.load_pretrained(_init(ref_outputs["images"]), old, log=None)
  np.testing.assert_array_equal(out["pos_embedding"], params["pos_embedding"])
  assert any("dropped the cls row" in r for r in report)


def test_load_pretrained_new_head_keeps_init(ref_outputs):
  init = _init(ref_outputs["images"], num_classes=100)
  init["head"]["bias"] = np.full_like(init["head"]["bias"], -10.0)
  out, report = ckpt_lib.load_pretrained(init, REF_CKPT, dont_load=("head/kernel", "head/bias"),
                                         log=None)
  np.testing.assert_array_equal(out["head"]["bias"], init["head"]["bias"])
  assert out["head"]["kernel"].shape == (48, 100)
  assert "kept init for head/kernel" in report
  with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(48, 10\) vs model \(48, 100\)"):
    ckpt_lib.load_pretrained(init, REF_CKPT, log=None)


def test_load_pretrained_keeps_stored_kernel_and_wraps_variables(ref_outputs):
  init = _init(ref_outputs["images"], patch_size=(16, 16))
  assert init["embedding"]["kernel"].shape[:2] == (16, 16)
  out, report = ckpt_lib.load_pretrained({"params": init}, REF_CKPT, log=None)
  out = out["params"]
  assert out["embedding"]["kernel"].shape == (32, 32, 3, 48)
  assert any("kept the checkpoint's 32x32 embedding/kernel" in r for r in report)
  for s in (6, 15):
    np.testing.assert_allclose(_logits(out, ref_outputs["images"], s, patch_size=(16, 16)),
                               ref_outputs[f"logits:seqhw={s}"], rtol=0, atol=1e-4)


def test_load_pretrained_errors(params, ref_outputs):
  init = _init(ref_outputs["images"], width=24, num_heads=3, mlp_dim=96)
  with pytest.raises(ValueError, match=r"shapes do not match the model \(36: Transformer/"
                                       r"encoder_norm/bias: checkpoint \(48,\) vs model \(24,\)"):
    ckpt_lib.load_pretrained(init, params, log=None)

  extra = {**params, "bogus": np.zeros(3, np.float32)}
  fewer = {k: v for k, v in params.items() if k != "head"}
  with pytest.raises(ValueError, match="not the model 1: bogus"):
    ckpt_lib.load_pretrained(_init(ref_outputs["images"]), extra, log=None)
  with pytest.raises(ValueError, match="not the checkpoint 2: head/bias, head/kernel"):
    ckpt_lib.load_pretrained(_init(ref_outputs["images"]), fewer, log=None)
  with pytest.raises(ValueError, match="not a valid regex"):
    ckpt_lib.load_pretrained(_init(ref_outputs["images"]), params, dont_load=("(",), log=None)


def test_load_pretrained_casts_dtype(params, ref_outputs):
  bf = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  out, report = ckpt_lib.load_pretrained(_init(ref_outputs["images"]), bf, log=None)
  assert all(v.dtype == np.float32 for v in ckpt_lib.flatten(out).values())
  assert any("from bfloat16 to float32" in r for r in report)


def test_non_local_paths_go_through_gfile(params):
  """tf.io.gfile's in-memory `ram://` filesystem stands in for gs:// (no network)."""
  root = f"ram://flexivit_ckpt_test_{os.getpid()}"
  ckpt_lib.save_params(f"{root}/p.npz", params)
  _assert_trees_equal(ckpt_lib.load_params(f"{root}/p.npz"), params)
  _assert_trees_equal(ckpt_lib.load_params(f"{root}/p.npz:Transformer"), params["Transformer"])
  ckpt_lib.save_flat(f"{root}/checkpoint_000000005.npz",
                     {"params/" + k: v for k, v in ckpt_lib.flatten(params).items()})
  assert ckpt_lib.latest_checkpoint(root) == f"{root}/checkpoint_000000005.npz"
  _assert_trees_equal(ckpt_lib.load_params(root), params)
  with pytest.raises(ValueError, match="does not exist"):
    ckpt_lib.load_params(f"{root}/missing.npz")
