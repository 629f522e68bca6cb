"""big_vision's npz format (`npz`): the reference checkpoint's logits, bf16, atomic writes,
corrupt files, legacy layouts, remote paths through gfile."""
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest
from conftest import REF_CKPT as CKPT
from conftest import REF_SEQHWS

from flexivit_jax.checkpoints import npz, sources

from .reference_model import assert_trees_equal, logits


@pytest.fixture(scope="module")
def params():
  return sources.load_params(CKPT)


def test_reference_checkpoint_matches_reference_logits(params, ref_outputs):
  for s in REF_SEQHWS:
    got = logits(params, ref_outputs["images"], s)
    np.testing.assert_allclose(got, ref_outputs[f"logits:seqhw={s}"], rtol=0, atol=1e-4,
                               err_msg=f"seqhw={s}")


def test_round_trip_with_bf16(tmp_path, params):
  tree = dict(params)
  tree["extra"] = {"bf16": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)}
  path = tmp_path / "p.npz"
  npz.save_params(path, tree)
  with zipfile.ZipFile(path) as zf:
    with zf.open("extra/bf16.npy") as f:
      major, _ = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if major == 1
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(f)
  assert dtype.kind == "V" and dtype.itemsize == 2 and shape == (2, 3)
  with np.load(path) as raw:  # what big_vision sees
    assert raw["extra/bf16"].dtype.kind == "V"
  loaded = sources.load_params(path)
  assert_trees_equal(loaded, tree)
  assert loaded["extra"]["bf16"].dtype == ml_dtypes.bfloat16


def test_flat_helpers_round_trip(tmp_path):
  flat = {"params/a/b": np.ones((2,), np.float32), "step": np.asarray(7),
          "file": np.zeros(1)}  # 'file' would clash with np.savez's own argument.
  npz.save_flat(tmp_path / "s.npz", flat)
  got = npz.load_flat(tmp_path / "s.npz")
  assert sorted(got) == sorted(flat) and int(got["step"]) == 7
  assert npz.flatten(npz.unflatten(flat)) == flat
  with pytest.raises(ValueError, match="both an array and a prefix"):
    npz.unflatten({"a": 1, "a/b": 2})


def test_atomic_write_keeps_previous_file(tmp_path, monkeypatch, params):
  path = tmp_path / "ckpt.npz"
  npz.save_params(path, params)
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
    npz.save_params(path, {"x": np.ones(3)} | params)
  monkeypatch.undo()
  assert len(calls) == 3
  assert path.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]
  assert_trees_equal(sources.load_params(path), params)


def test_truncated_and_corrupt_files(tmp_path):
  data = CKPT.read_bytes()
  half = tmp_path / "half.npz"
  half.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated"):
    sources.load_params(half)
  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"this is not a zip file at all")
  with pytest.raises(ValueError, match="truncated or corrupt"):
    npz.load_flat(garbage)
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 0xFF  # Inside an array: caught by the zip CRC.
  (tmp_path / "flip.npz").write_bytes(bytes(flipped))
  with pytest.raises(ValueError, match="truncated or corrupt"):
    sources.load_params(tmp_path / "flip.npz")


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
  npz.save_params(path, _legacy(params))
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel" in np.load(path).files
  loaded = sources.load_params(path)
  assert_trees_equal(loaded, params)
  np.testing.assert_allclose(logits(loaded, ref_outputs["images"], 8),
                             ref_outputs["logits:seqhw=8"], rtol=0, atol=1e-4)
  # The other old posemb location.
  alt = _legacy(params)
  alt["Transformer"]["pos_embedding"] = alt["Transformer"].pop("posembed_input")["pos_embedding"]
  npz.save_params(path, alt)
  assert_trees_equal(sources.load_params(path), params)


def test_inlined_map_head_moves_under_maphead():
  tree = {"probe": np.zeros((1, 1, 4)), "MlpBlock_0": {"Dense_0": {"kernel": np.zeros(2)}},
          "LayerNorm_0": {"scale": np.ones(4)}, "head": {"bias": np.zeros(2)}}
  fixed = npz.fix_legacy_layout(tree)
  assert sorted(fixed) == ["MAPHead_0", "head"]
  assert sorted(fixed["MAPHead_0"]) == ["LayerNorm_0", "MlpBlock_0", "probe"]


def test_non_local_paths_go_through_gfile(params):
  """tf.io.gfile's in-memory `ram://` filesystem stands in for gs:// (no network)."""
  root = f"ram://flexivit_ckpt_test_{os.getpid()}"
  npz.save_params(f"{root}/p.npz", params)
  assert_trees_equal(sources.load_params(f"{root}/p.npz"), params)
  assert_trees_equal(sources.load_params(f"{root}/p.npz:Transformer"), params["Transformer"])
  with pytest.raises(ValueError, match="does not exist"):
    sources.load_params(f"{root}/missing.npz")
