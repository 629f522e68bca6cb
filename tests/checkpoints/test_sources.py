"""Where params come from (`sources`): shortcut names, subkeys, training layouts inside an npz,
missing files, and training workdirs (plain directories are refused)."""
import os

import numpy as np
import pytest
from conftest import REF_CKPT as CKPT

from flexivit_jax.checkpoints import npz, sources, step_dirs
from flexivit_jax.errors import UserError

from .reference_model import assert_trees_equal
from .saved_states import assert_trees_equal as assert_states_equal
from .saved_states import deny, make_state, save_steps, truncate_data_files


@pytest.fixture(scope="module")
def params():
  return sources.load_params(CKPT)


def test_shortcut_resolution_is_offline():
  assert sources.resolve_checkpoint("FlexiViT-B i1k") == \
      "gs://big_vision/flexivit/flexivit_b_i1k.npz"
  assert sources.resolve_checkpoint("flexivit-l   I1K") == \
      "gs://big_vision/flexivit/flexivit_l_i1k.npz"
  assert sources.resolve_checkpoint("ViT-B/16 i21k") == \
      "gs://big_vision/flexivit/vit_b16_i21k_300ep.npz"
  assert len(sources.CHECKPOINTS) == 8
  assert all(u.startswith("gs://big_vision/flexivit/") for u in sources.CHECKPOINTS.values())
  assert sources.resolve_checkpoint("x/y.npz") == os.path.abspath("x/y.npz")
  assert sources.resolve_checkpoint("gs://b/x.npz") == "gs://b/x.npz"
  assert sources.split_subkey("gs://b/x.npz:params") == ("gs://b/x.npz", "params")
  assert sources.split_subkey("gs://b/x.npz") == ("gs://b/x.npz", None)
  assert sources.split_subkey("FlexiViT-S i1k:Transformer") == ("FlexiViT-S i1k", "Transformer")


def test_training_layouts_and_subkey(tmp_path, params):
  flat = npz.flatten(params)
  train = {**{"params/" + k: v for k, v in flat.items()},
           "opt/0/mu/head/bias": np.zeros(10, np.float32), "step": np.asarray(3)}
  npz.save_flat(tmp_path / "train.npz", train)
  assert_trees_equal(sources.load_params(tmp_path / "train.npz"), params)
  assert_trees_equal(sources.load_params(f"{tmp_path / 'train.npz'}:params"), params)

  npz.save_flat(tmp_path / "old.npz", {"opt/target/" + k: v for k, v in flat.items()})
  assert_trees_equal(sources.load_params(tmp_path / "old.npz"), params)

  sub = sources.load_params(f"{CKPT}:Transformer")
  assert_trees_equal(sub, params["Transformer"])
  with pytest.raises(ValueError, match="no key 'Transformer/nope'"):
    sources.load_params(f"{CKPT}:Transformer/nope")


def test_missing_and_unknown(tmp_path):
  with pytest.raises(ValueError, match="does not exist.*FlexiViT-B i1k"):
    sources.load_params(tmp_path / "missing.npz")
  with pytest.raises(ValueError, match="'FlexiViT-X i1k' .*does not exist.*ViT-B/30 i21k"):
    sources.load_params("FlexiViT-X i1k")


def test_read_params_names_damage_or_the_cause(tmp_path, monkeypatch):
  save_steps(tmp_path, [2, 4]).close()
  truncate_data_files(tmp_path / step_dirs.CHECKPOINT_SUBDIR / "step_000000004")
  with pytest.raises(UserError, match="step_000000004 is damaged .*truncated.*read another step"):
    sources.load_params(str(tmp_path))
  assert_states_equal(sources.load_params(str(tmp_path), step=2), make_state(2)["params"])
  monkeypatch.setattr(sources, "_read_item", deny("x"))
  with pytest.raises(UserError, match="step_000000002 is complete on disk but could not be read "
                     r"\(PermissionError.*check the permissions"):
    sources.load_params(str(tmp_path), step=2)


def test_a_directory_that_is_no_training_workdir_is_refused(tmp_path, params):
  npz.save_params(tmp_path / "p.npz", params)  # An npz inside does not make it a workdir.
  with pytest.raises(UserError, match="is a directory but not a training workdir"):
    sources.load_params(tmp_path)
  with pytest.raises(UserError, match="step=3 needs a training workdir"):
    sources.load_params(tmp_path / "p.npz", step=3)
