"""Per-block and scanned encoder layouts: files keep big_vision's names whatever the model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REF_CKPT, REF_MODEL, reference_model
from flexivit_jax.checkpoints import adapt, layout, manager, npz, sources
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import loading

from .saved_states import assert_trees_equal, replicated


@pytest.fixture(scope="module")
def ref():
  return sources.load_params(REF_CKPT)


def _scanned_init(**fields):
  model = reference_model(scan=True, **fields)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  return model, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes["params"])


def test_round_trip_and_idempotence(ref):
  scanned = layout.to_scan(ref)
  assert layout.is_scanned(scanned) and not layout.is_scanned(ref)
  assert set(scanned["Transformer"]) == {"encoderblock", "encoder_norm"}
  stacked = scanned["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_1"]["kernel"]
  assert stacked.shape == (2, 96, 48)
  np.testing.assert_array_equal(
      stacked[1], ref["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_1"]["kernel"])
  assert_trees_equal(layout.to_pyloop(scanned), ref)
  assert_trees_equal(layout.to_scan(scanned), scanned)
  assert_trees_equal(layout.to_pyloop(ref), ref)
  assert layout.for_model({"params": ref}, reference_model(scan=True))["params"].keys() == (
      scanned.keys())


def test_layouts_that_cannot_convert(ref):
  gap = dict(ref, Transformer={k: v for k, v in ref["Transformer"].items()
                               if k != "encoderblock_0"})
  with pytest.raises(UserError, match=r"numbered \[1\]"):
    layout.to_scan(gap)
  both = layout.to_scan(ref)
  both["Transformer"]["encoderblock_0"] = ref["Transformer"]["encoderblock_0"]
  with pytest.raises(UserError, match="both encoderblock and encoderblock_<i>"):
    layout.to_pyloop(both)


def test_npz_round_trip_of_a_scanned_model_uses_big_vision_names(tmp_path, ref):
  model, _ = _scanned_init()
  params = layout.to_scan(ref)
  npz.save_params(tmp_path / "scanned.npz", params)
  keys = set(npz.load_flat(tmp_path / "scanned.npz"))
  assert keys == set(npz.load_flat(REF_CKPT))
  assert "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel" in keys
  back = layout.for_model(sources.load_params(tmp_path / "scanned.npz"), model)
  assert_trees_equal(back, params)
  # A stacked npz (as a scanned model's flat params would be written) reads per block too.
  npz.save_flat(tmp_path / "stacked.npz", npz.flatten(params))
  assert_trees_equal(sources.load_params(tmp_path / "stacked.npz"), ref)


def test_reference_checkpoint_loads_into_a_scanned_model(ref_outputs, ref):
  model, init = _scanned_init()
  params, _ = adapt.load_pretrained(init, REF_CKPT, log=None)
  assert layout.is_scanned(params)
  for seqhw in (5, 8, 30):
    images = ref_outputs["images"]
    logits, _ = model.apply({"params": params}, images, seqhw=seqhw)
    np.testing.assert_allclose(logits, ref_outputs[f"logits:seqhw={seqhw}"], rtol=0, atol=1e-4)
    want, _ = reference_model().apply({"params": ref}, images, seqhw=seqhw)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-6)


def test_load_pretrained_into_scanned_keeps_per_block_dont_load(ref):
  _, init = _scanned_init()
  scanned_ckpt = layout.to_scan(ref)  # Params in memory may be stacked too.
  params, report = adapt.load_pretrained(init, scanned_ckpt, log=None,
                                         dont_load=("Transformer/encoderblock_1/.*",))
  blocks = params["Transformer"]["encoderblock"]
  np.testing.assert_array_equal(blocks["LayerNorm_0"]["scale"][0],
                                ref["Transformer"]["encoderblock_0"]["LayerNorm_0"]["scale"])
  np.testing.assert_array_equal(blocks["LayerNorm_0"]["scale"][1], np.zeros(48))  # init kept.
  assert any("kept init for Transformer/encoderblock_1/" in line for line in report)


def test_evaluation_model_of_a_scanned_config_gets_stacked_params(tmp_path):
  model, params, _ = loading.load_model(str(REF_CKPT), '{"scan": true, "width": 48, '
                                        '"depth": 2, "num_heads": 3, "mlp_dim": 96}')
  assert model.scan and layout.is_scanned(params)
  logits, _ = model.apply({"params": params}, np.zeros((1, 64, 64, 3)), seqhw=4)
  assert logits.shape == (1, REF_MODEL["num_classes"])


def _state(params):
  return {"params": params, "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
          "step": jnp.asarray(3, jnp.int32)}


def test_a_scanned_workdir_reads_and_exports_per_block(tmp_path, ref):
  from flexivit_jax import export
  state = _state(jax.tree.map(jnp.asarray, layout.to_scan(ref)))
  ckpts = manager.StateCheckpoints(str(tmp_path), keep=2)
  ckpts.save(3, state)
  ckpts.wait()
  restored, step = ckpts.restore(jax.eval_shape(lambda: state), replicated(state))
  ckpts.close()
  assert step == 3 and layout.is_scanned(restored["params"])
  assert_trees_equal(sources.load_params(str(tmp_path)), ref)
  export.export(str(tmp_path), str(tmp_path / "out.npz"))
  assert set(npz.load_flat(tmp_path / "out.npz")) == set(npz.load_flat(REF_CKPT))


def test_resuming_with_the_other_scan_setting_is_one_user_error(tmp_path, ref):
  scanned = _state(jax.tree.map(jnp.asarray, layout.to_scan(ref)))
  per_block = _state(jax.tree.map(jnp.asarray, ref))
  ckpts = manager.StateCheckpoints(str(tmp_path), keep=2)
  ckpts.save(3, scanned)
  ckpts.wait()
  with pytest.raises(UserError, match="scan=True and this config has model.scan=False"):
    ckpts.restore(jax.eval_shape(lambda: per_block), replicated(per_block))
  ckpts.close()
  assert sources.load_params(str(tmp_path)).keys() == ref.keys()  # Nothing set aside.
