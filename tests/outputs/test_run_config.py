"""config.json: written atomically (local and URL), read back, and what readers ask of it."""
import json

import ml_collections
import pytest

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import run_config

EVAL_PP = "decode|resize(54)|central_crop(48)|value_range(-1, 1)"


def _config():
  return ml_collections.ConfigDict({
      "model": {"variant": "Ti/16", "width": 64},
      "input": {"pp": "decode|inception_crop(32)|flip_lr|value_range(-1, 1)",
                "data_dir": "/data"},
      "evals": {"val": {"data": {"name": "digits", "split": "val"}, "pp": "decode|resize(16)"},
                "test": {"data": {"name": "digits", "split": "test"},
                         "pp": EVAL_PP + "|onehot(10, key='real_label', key_result='labels')"
                               "|keep('image', 'labels')"}},
      "flexi": {"seqhw": {"v": [8, 2, 4], "p": "uniform"}},
      "eval_flexi": None})


@pytest.mark.parametrize("workdir", ["local", "ram://flexivit_run_config/run"])
def test_written_atomically_and_read_back(tmp_path, workdir):
  workdir = str(tmp_path / "run") if workdir == "local" else workdir
  path = run_config.write(_config(), workdir)
  assert path == f"{workdir}/config.json"
  config = run_config.read(workdir)
  assert config.values == json.loads(_config().to_json())
  assert config.model_fields == {"variant": "Ti/16", "width": 64}
  assert config.data_dir == "/data"
  if workdir.startswith("/"):
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json"]


def test_readers_get_the_first_evaluator_and_the_evaluated_grids(tmp_path):
  run_config.write(_config(), str(tmp_path))
  config = run_config.read(str(tmp_path))
  assert config.evaluator()["data"]["split"] == "test"  # The first by name.
  assert config.evaluator("val")["pp"] == "decode|resize(16)"
  assert config.evaluator("train") is None
  assert config.eval_seqhws() == [2, 4, 8]  # eval_flexi unset: flexi's grids.


def test_the_default_evaluator_is_the_first_of_the_runs_task_never_a_probe(tmp_path):
  evals = {"a_probe": {"type": "fewshot", "datasets": {}},
           "seg": {"type": "segmentation", "data": {"split": "test"}, "pp": "decode"},
           "val": {"data": {"split": "val"}, "pp": "decode"}}
  run_config.write(ml_collections.ConfigDict({"task": "segmentation", "evals": evals}),
                   str(tmp_path / "seg"))
  run_config.write(ml_collections.ConfigDict({"evals": evals}), str(tmp_path / "cls"))
  assert run_config.read(str(tmp_path / "seg")).evaluator()["type"] == "segmentation"
  assert run_config.read(str(tmp_path / "cls")).evaluator()["data"]["split"] == "val"


def test_a_workdir_without_config_json_reads_none_and_bad_json_is_a_user_error(tmp_path):
  assert run_config.read(str(tmp_path)) is None
  assert run_config.read(str(tmp_path / "ckpt.npz")) is None
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json.*is not valid JSON"):
    run_config.read(str(tmp_path))


def test_eval_image_size_is_what_the_evaluators_pp_makes(tmp_path):
  run_config.write(_config(), str(tmp_path))
  config = run_config.read(str(tmp_path))
  assert config.eval_image_size() == 48  # resize(54) then central_crop(48); labels skipped.
  assert config.eval_image_size("val") == 16
  (tmp_path / "config.json").write_text(json.dumps({"input": {"pp": "decode|resize(40)"}}))
  assert run_config.read(str(tmp_path)).eval_image_size() == 40  # No evals: the training pp.


@pytest.mark.parametrize("pp,side", [
    ("decode|resize(48)|value_range(-1,1)", 48),
    ("decode_jpeg_and_inception_crop(224)|flip_lr|value_range(-1, 1)|onehot(10)", 224),
    ("decode|inception_crop|flip_lr|copy('image', 'prof')|resize(16)|resize(32, key='prof')", 16),
    ("decode|resize_small(40)|central_crop(32)", 32),
    ("decode|resize_small(40)", None),  # The side depends on each image.
    ("decode|resize((32, 48))", None),  # Not square.
    ("decode|value_range(-1, 1)", None),
])
def test_pp_image_side(pp, side):
  assert run_config.pp_image_side(pp) == side
