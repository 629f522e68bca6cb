"""Fitting a checkpoint to a model (`adapt.load_pretrained`): posemb resampling, the cls row,
new heads, a patch kernel of another size, dtype casts, and the refusals."""
import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import REF_CKPT as CKPT

from flexivit_jax.checkpoints import adapt, npz, sources
from flexivit_jax.models import resize

from .reference_model import init_like, logits


@pytest.fixture(scope="module")
def params():
  return sources.load_params(CKPT)


def test_load_pretrained_resamples_posemb(params, ref_outputs):
  init = init_like(ref_outputs["images"], posemb_size=(10, 10))
  lines = []
  out, report = adapt.load_pretrained(init, CKPT, log=lines.append)
  assert report == lines and any("7x7 to 10x10" in r for r in report)
  want = resize.resample_posemb(params["pos_embedding"], (10, 10), rule="load")
  np.testing.assert_allclose(out["pos_embedding"], want, rtol=0, atol=1e-6)
  assert out["pos_embedding"].shape == (1, 100, 48)
  logits(out, ref_outputs["images"][:1], 10, posemb_size=(10, 10))  # Runs.


def test_load_pretrained_tok_model_and_cls(params, ref_outputs):
  init = init_like(ref_outputs["images"], pool_type="tok")
  with pytest.raises(ValueError, match="not the checkpoint 1: cls"):
    adapt.load_pretrained(init, CKPT, log=None)
  out, report = adapt.load_pretrained(init, CKPT, dont_load=("cls",), log=None)
  np.testing.assert_array_equal(out["cls"], init["cls"])
  assert "kept init for cls" in report

  # A 50-row posemb (cls row first) into a tok model: row 0 is added to cls.
  cls = np.full((1, 1, 48), 0.5, np.float32)
  row0 = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 1, 48)
  old = {**params, "cls": cls,
         "pos_embedding": np.concatenate([row0, params["pos_embedding"]], axis=1)}
  out, report = adapt.load_pretrained(init, old, log=None)
  np.testing.assert_allclose(out["cls"], cls + row0)
  np.testing.assert_array_equal(out["pos_embedding"], params["pos_embedding"])
  assert any("added it to cls" in r for r in report)
  # Into a gap model (no cls): the row is dropped and the report says so.
  old.pop("cls")
  out, report = adapt.load_pretrained(init_like(ref_outputs["images"]), old, log=None)
  np.testing.assert_array_equal(out["pos_embedding"], params["pos_embedding"])
  assert any("dropped the cls row" in r for r in report)


def test_load_pretrained_new_head_keeps_init(ref_outputs):
  init = init_like(ref_outputs["images"], num_classes=100)
  init["head"]["bias"] = np.full_like(init["head"]["bias"], -10.0)
  out, report = adapt.load_pretrained(init, CKPT, dont_load=("head/kernel", "head/bias"),
                                         log=None)
  np.testing.assert_array_equal(out["head"]["bias"], init["head"]["bias"])
  assert out["head"]["kernel"].shape == (48, 100)
  assert "kept init for head/kernel" in report
  with pytest.raises(ValueError, match=r"head/kernel: checkpoint \(48, 10\) vs model \(48, 100\)"):
    adapt.load_pretrained(init, CKPT, log=None)


def test_load_pretrained_keeps_stored_kernel_and_wraps_variables(ref_outputs):
  init = init_like(ref_outputs["images"], patch_size=(16, 16))
  assert init["embedding"]["kernel"].shape[:2] == (16, 16)
  out, report = adapt.load_pretrained({"params": init}, CKPT, log=None)
  out = out["params"]
  assert out["embedding"]["kernel"].shape == (32, 32, 3, 48)
  assert any("kept the checkpoint's 32x32 embedding/kernel" in r for r in report)
  for s in (6, 15):
    np.testing.assert_allclose(logits(out, ref_outputs["images"], s, patch_size=(16, 16)),
                               ref_outputs[f"logits:seqhw={s}"], rtol=0, atol=1e-4)


def test_load_pretrained_errors(params, ref_outputs):
  init = init_like(ref_outputs["images"], width=24, num_heads=3, mlp_dim=96)
  with pytest.raises(ValueError, match=r"shapes do not match the model \(36: Transformer/"
                                       r"encoder_norm/bias: checkpoint \(48,\) vs model \(24,\)"):
    adapt.load_pretrained(init, params, log=None)

  extra = {**params, "bogus": np.zeros(3, np.float32)}
  fewer = {k: v for k, v in params.items() if k != "head"}
  with pytest.raises(ValueError, match="not the model 1: bogus"):
    adapt.load_pretrained(init_like(ref_outputs["images"]), extra, log=None)
  with pytest.raises(ValueError, match="not the checkpoint 2: head/bias, head/kernel"):
    adapt.load_pretrained(init_like(ref_outputs["images"]), fewer, log=None)
  with pytest.raises(ValueError, match="not a valid regex"):
    adapt.load_pretrained(init_like(ref_outputs["images"]), params, dont_load=("(",), log=None)


def test_load_pretrained_casts_dtype(params, ref_outputs):
  bf = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), params)
  out, report = adapt.load_pretrained(init_like(ref_outputs["images"]), bf, log=None)
  assert all(v.dtype == np.float32 for v in npz.flatten(out).values())
  assert any("from bfloat16 to float32" in r for r in report)
