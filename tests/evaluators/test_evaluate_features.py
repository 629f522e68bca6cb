"""`python -m flexivit_jax.evaluate --eval/--eval_config`: few-shot and retrieval reports."""
import json
import os

import jax
import numpy as np
import pytest

from flexivit_jax import evaluate, evaluators
from flexivit_jax.checkpoints import npz
from flexivit_jax.evaluators import sweep
from flexivit_jax.models import vit
from flexivit_jax.outputs import run_config

FIELDS = dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=(8, 8),
              posemb_size=(2, 2), pool_type="tok")
PP = "decode|resize(16)|value_range(-1, 1)|keep('image', 'label')"
FEW = {"type": "fewshot", "datasets": {"digits": ("sklearn_digits", "train", "test")},
       "shots": [1, 5], "l2_reg": 1024.0, "pp_train": PP, "pp_eval": PP}
RET = {"type": "retrieval", "data": {"name": "sklearn_digits", "split": "test"}, "pp": PP}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  model = vit.from_config(FIELDS)
  params = model.init(jax.random.PRNGKey(1), np.zeros((1, 16, 16, 3), np.float32))["params"]
  path = str(tmp_path_factory.mktemp("ckpt") / "tiny.npz")
  npz.save_params(path, jax.tree.map(np.asarray, params))
  return path, model, params


def cli(checkpoint, *argv):
  evaluate.main(["--checkpoint", checkpoint[0], "--model", json.dumps(FIELDS), "--seqhw", "2,4",
                 *argv])


def test_fewshot_from_the_cli_writes_fewshot_json(checkpoint, digits_data_dir, tmp_path, capsys):
  out = str(tmp_path / "out")
  cli(checkpoint, "--eval_config", repr(FEW), "--out", out, "--data_dir", digits_data_dir)
  printed = capsys.readouterr().out
  assert "digits_1shot" in printed and "fewshot.json" in printed
  with open(os.path.join(out, "fewshot.json")) as f:
    report = json.load(f)
  assert [r["seqhw"] for r in report["rows"]] == [2, 4]
  assert [r["patch"] for r in report["rows"]] == [8, 4]
  want = sweep.evaluate_features(checkpoint[1], checkpoint[2], "x", FEW, [2, 4],
                                 data_dir=digits_data_dir)
  for row in report["rows"]:
    assert row["digits_5shot"] == pytest.approx(want[row["seqhw"]]["digits_5shot"], abs=1e-6)


def test_retrieval_from_the_cli_writes_the_matrix(checkpoint, digits_data_dir, tmp_path, capsys):
  out = str(tmp_path / "out")
  cli(checkpoint, "--eval_config", repr(RET), "--out", out, "--data_dir", digits_data_dir)
  printed = capsys.readouterr().out
  assert "R@1 query\\gallery" in printed and "R@5" in printed
  with open(os.path.join(out, "retrieval.json")) as f:
    report = json.load(f)
  assert report["seqhws"] == [2, 4] and report["patches"] == [8, 4]
  matrix = np.array(report["recall"]["1"])
  assert matrix.shape == (2, 2) and ((0 <= matrix) & (matrix <= 1)).all()
  assert (np.array(report["recall"]["5"]) >= matrix).all()
  assert os.path.getsize(os.path.join(out, "retrieval.png")) > 1000


def test_eval_name_reads_the_workdir_config_and_names_the_choices(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"evals": {"fs": FEW, "test": RET}}))
  config = run_config.read(str(tmp_path))
  args = evaluate.parse_args(["--checkpoint", str(tmp_path), "--eval", "fs"])
  name, cfg = evaluate.named_eval_config(args, config)
  assert (name, cfg) == ("fs", json.loads(json.dumps(FEW)))  # Tuples come back as lists.
  evaluators.check_config(name, cfg)
  args = evaluate.parse_args(["--checkpoint", str(tmp_path), "--eval", "nope"])
  with pytest.raises(evaluate.UserError, match="has evals fs, test"):
    evaluate.named_eval_config(args, config)
  assert config.evaluator() is None  # Only classification evals are the default one.


@pytest.mark.parametrize("argv,message", [
    (["--eval_config", "{'type': 'fewshot'}"], "must name at least one dataset"),
    (["--eval_config", "[1]"], "must be a dict literal or a JSON file"),
    (["--eval_config", "{'type': 'retrieval', 'pp': 'x'}"], "needs 'data'"),
    (["--eval", "a", "--eval_config", "{}"], "not both"),
])
def test_bad_eval_configs_are_one_line_exit_2(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--checkpoint", str(tmp_path), "--model", "Ti/16", *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err
