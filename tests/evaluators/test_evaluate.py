"""The evaluation CLI, its report files, the eval metrics and `compare` over eval.json."""
import csv
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from flexivit_jax import compare, evaluate
from flexivit_jax.training import config as config_lib
from flexivit_jax.evaluators import classification
from flexivit_jax.outputs import eval_files
from flexivit_jax.outputs import runlog
from flexivit_jax.training import loop
from flexivit_jax.errors import UserError
from conftest import DEMO_CONFIG, REPO
from .test_predict import analytic_vit_flops


def test_classification_sums_match_numpy():
  logits = jnp.asarray([[0., 3., 1., 2., -1., -2., 0.5],
                        [5., 0., 0., 0., 0., 0., 0.],
                        [0., 0., 0., 0., 0., 1., 0.]])
  labels = jnp.eye(7)[jnp.asarray([1, 6, 0])]
  mask = jnp.asarray([True, True, False])
  sums = classification.classification_sums(logits, labels, mask)
  assert float(sums["top1"]) == 1.0  # Row 0 right, row 1 wrong, row 2 masked out.
  assert float(sums["top5"]) == 1.0  # Row 1: class 6 ties with 1..5 at 0; top_k keeps the lower indices.
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -(log_softmax[0, 1] + log_softmax[1, 6])
  assert float(sums["loss"]) == pytest.approx(float(want), rel=1e-6)
  assert float(sums["count"]) == 2.0


@pytest.fixture(scope="module")
def demo_workdir(digits_data_dir, tmp_path_factory):
  """The demo config (48 px, width 64, depth 4) trained for 2 steps, with its config.json."""
  wd = str(tmp_path_factory.mktemp("demo"))
  config = config_lib.complete(config_lib.load_config_file(f"{DEMO_CONFIG}:steps=2"),
                              [("progress_bar", "False"), ("schedule.warmup_steps", "1")])
  loop.train_and_evaluate(config, wd)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  return wd


@pytest.mark.slow
def test_evaluating_the_demo_workdir_prints_the_table_and_writes_the_report(
    demo_workdir, tmp_path, capsys):
  out = str(tmp_path / "eval")
  evaluate.main(["--checkpoint", demo_workdir, "--out", out, "--no_progress"])
  printed = capsys.readouterr().out
  lines = [l for l in printed.splitlines() if l.strip()]
  assert lines[0].split()[:3] == ["seqhw", "patch", "tokens"]
  rows = eval_files.read_eval(out)
  assert [r["seqhw"] for r in rows] == [3, 4, 6, 8, 12]
  assert [r["patch"] for r in rows] == [16, 12, 8, 6, 4]
  assert all(f"{r['seqhw']:>5}" in printed for r in rows)
  with open(os.path.join(out, "eval.csv")) as f:
    assert [int(r["seqhw"]) for r in csv.DictReader(f)] == [3, 4, 6, 8, 12]
  assert os.path.getsize(os.path.join(out, "eval.png")) > 0
  # Same numbers as the trainer's own final evaluation.
  final = runlog.read_metrics(demo_workdir)[-1]
  for r in rows:
    assert r["top1"] == pytest.approx(final[f"eval/test/seqhw={r['seqhw']}/prec@1"], abs=1e-6)
    assert r["top1"] <= r["top5"] <= 1.0 and r["loss"] > 0 and r["img_per_s"] > 0
  gflops = [r["gflops"] for r in rows]
  assert all(a < b for a, b in zip(gflops, gflops[1:]))
  for r in rows:
    want = analytic_vit_flops(image=48, seqhw=r["seqhw"], width=64, depth=4, mlp_dim=128,
                              num_classes=10) / 1e9
    assert abs(r["gflops"] - want) / want < 0.10, (r, want)

  # A budget picks the finest grid within it and evaluates only that one.
  budget = (rows[2]["gflops"] + rows[3]["gflops"]) / 2
  evaluate.main(["--checkpoint", demo_workdir, "--max_gflops", str(budget), "--no_progress",
                 "--seqhw", "3,4,6,8,12"])
  assert "seqhw=6 (patch 8)" in capsys.readouterr().out

  # Several checkpoints' eval.json on one plot.
  other = str(tmp_path / "eval_b")
  evaluate.main(["--checkpoint", demo_workdir, "--out", other, "--progress=lines", "--seqhw",
                 "4,8", "--data", "sklearn_digits:test",
                 "--pp", "decode|resize(48)|value_range(-1, 1)|onehot(10, key='label', "
                 "key_result='labels')"])
  # --progress=lines: a start line and a line per grid before the table (--no_progress
  # above printed the table first).
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == (f"evaluating {demo_workdir} on sklearn_digits:test at seqhw 4,8: "
                      "5 batches of 64 per grid")
  grid_lines = [l for l in lines if l.startswith("seqhw ") and "top1" in l]
  assert [l.split("  ")[0] for l in grid_lines] == ["seqhw 4 (patch 12)", "seqhw 8 (patch 6)"]
  assert lines.index(grid_lines[-1]) < next(i for i, l in enumerate(lines)
                                           if l.split()[:2] == ["seqhw", "patch"])
  compare.main([out, other, "--out", str(tmp_path / "both")])  # --out: a directory.
  printed = capsys.readouterr().out
  assert "eval_b" in printed and str(tmp_path / "both" / compare.PLOT) in printed
  assert os.path.getsize(tmp_path / "both" / compare.PLOT) > 0
  assert "eval_b" in (tmp_path / "both" / compare.TABLE).read_text()


@pytest.mark.parametrize("argv,message", [
    (["--data", "digits"], "NAME:SPLIT"),
    (["--seqhw", "4,x"], "--seqhw"),
    (["--batch_size", "0"], "--batch_size"),
])
def test_user_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--checkpoint", str(tmp_path), "--model", "Ti/16", *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_checkpoint_without_config_needs_a_model(tmp_path):
  from flexivit_jax.evaluators import loading
  with pytest.raises(UserError, match="--model"):
    loading.load_model(str(tmp_path))
  assert loading.model_from_spec("S/16") == {"variant": "S/16"}
  assert loading.model_from_spec('{"width": 8}') == {"width": 8}


@pytest.mark.slow
def test_cli_subprocess_error_exit_code(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.run([sys.executable, "-m", "flexivit_jax.evaluate", "--checkpoint",
                         str(tmp_path / "nope.npz"), "--model", "Ti/16"],
                        capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


PP16 = "decode|resize(16)|value_range(-1, 1)|onehot(10, key='label', key_result='labels')"
TINY = dict(num_classes=10, width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=(4, 4),
            posemb_size=(2, 2), head_zeroinit=False)


def test_label_mapping_scores_the_mapped_classes(digits_data_dir, tmp_path, capsys):
  """--label_mapping (a list or a file) reads model class map[j] for dataset class j."""
  import jax
  from flexivit_jax import data
  from flexivit_jax.checkpoints import npz
  from flexivit_jax.models.vit import FlexiViT
  model = FlexiViT(**TINY)
  params = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32), seqhw=4)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  npz.save_params(str(tmp_path / "tiny.npz"), params)
  batch = next(iter(data.eval_iterator(
      dict(name="sklearn_digits", split="test[:64]", data_dir=digits_data_dir), PP16, 64)))
  logits = np.asarray(model.apply({"params": params}, batch["image"], seqhw=4)[0])
  ids = batch["labels"].argmax(1)
  reverse = list(range(9, -1, -1))
  (tmp_path / "map.txt").write_text("\n".join(map(str, reverse)))
  model_json = json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()})
  base = ["--checkpoint", str(tmp_path / "tiny.npz"), "--model", model_json, "--data",
          "sklearn_digits:test[:64]", "--pp", PP16, "--seqhw", "4", "--batch_size", "32",
          "--no_progress"]
  top1 = {}
  for name, extra in [("plain", []), ("list", ["--label_mapping", json.dumps(reverse)]),
                      ("file", ["--label_mapping", str(tmp_path / "map.txt")])]:
    top1[name] = evaluate.run(evaluate.parse_args(base + extra))[0]["top1"]
  assert top1["plain"] == pytest.approx((logits.argmax(1) == ids).mean())
  assert top1["list"] == top1["file"] == pytest.approx((logits[:, ::-1].argmax(1) == ids).mean())
  assert top1["plain"] != top1["list"]
  for bad, message in [("[3, 2", "--label_mapping must be a list of ints"),
                       ("[3, 2, 1]", "label_mapping has 3 entries but its pp makes labels "
                                     "with 10 classes"),
                       (str(tmp_path / "nope.txt"), "does not exist")]:
    with pytest.raises(SystemExit) as e:
      evaluate.main(base + ["--label_mapping", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err
