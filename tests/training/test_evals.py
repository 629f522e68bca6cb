"""Training-time few-shot and retrieval evals: one predict step per model output, the same
numbers as the evaluate CLI's path, on 1 or 8 (emulated CPU) devices, and in a run."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, load_config, user_config
from flexivit_jax.evaluators import sweep
from flexivit_jax.models import vit
from flexivit_jax.outputs import runlog
from flexivit_jax.training import evals, sharding

PP = 'decode|resize(16)|value_range(-1, 1)|keep("image", "label")'
FEW = dict(type="fewshot", datasets={"digits": ("sklearn_digits", "train", "test")},
           shots=[1, 5], l2_reg=2.0 ** 10, pp_train=PP, pp_eval=PP, batch_size=100)
RET = dict(type="retrieval", data=dict(name="sklearn_digits", split="test"),
           gallery_data=dict(name="sklearn_digits", split="train"), pp=PP, batch_size=100)
FLEXIS = [(("seqhw", 2),), (("seqhw", 4),)]


def evals_config(**extra):
  """The tiny demo run, its classification eval kept, with a few-shot and a retrieval eval."""
  evals_cfg = {**user_config()["evals"], "fs": FEW, "ret": RET}
  return load_config(**{"evals": evals_cfg, "progress_bar": False, **extra})


def trainer_numbers(config):
  """The trainer's eval numbers for a fixed random-init model, by metric name."""
  model = vit.from_config(config.model)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
  mesh = sharding.make_mesh(config.mesh)
  built = evals.build_evaluators(config, model, mesh)
  return evals.evaluate(built, params, FLEXIS), model, params


def test_trainer_evals_equal_the_cli_path(digits_data_dir):
  config = evals_config()
  numbers, model, params = trainer_numbers(config)
  few = sweep.evaluate_features(model, params, "fs", FEW, [2, 4], data_dir=digits_data_dir)
  ret = sweep.evaluate_features(model, params, "ret", RET, [2, 4], data_dir=digits_data_dir)
  for s in (2, 4):
    for shots in (1, 5):
      name = f"eval/fs/seqhw={s}/digits_{shots}shot"
      assert numbers[name] == pytest.approx(few[s][f"digits_{shots}shot"], abs=1e-6)
    for k in (1, 5):
      assert numbers[f"eval/ret/seqhw={s}/recall@{k}"] == pytest.approx(
          ret[s][f"recall@{k}"], abs=1e-6)
    assert numbers[f"eval/ret/seqhw={s}/recall@1_vs_seqhw=2"] == pytest.approx(
        ret[s]["recall@1_vs_seqhw=2"], abs=1e-6)
  assert 0.1 < numbers["eval/fs/seqhw=4/digits_5shot"] <= 1.0
  assert "eval/test/seqhw=2/prec@1" in numbers  # The classification eval is still there.


DEVICES_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_evals import evals_config, trainer_numbers
numbers, _, _ = trainer_numbers(evals_config())
print("NUMBERS" + json.dumps(numbers))
"""


def numbers_on(devices, data_dir):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu", "FLEXIVIT_DATA_DIR": data_dir, "PYTHONPATH": str(REPO)}
  script = DEVICES_SCRIPT.format(tests=os.path.join(str(REPO), "tests", "training"))
  proc = subprocess.run([sys.executable, "-c", script], cwd=os.path.join(str(REPO), "tests"),
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("NUMBERS")][-1]
  return json.loads(line[len("NUMBERS"):])


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_numbers(digits_data_dir):
  one, eight = numbers_on(1, digits_data_dir), numbers_on(8, digits_data_dir)
  assert one.keys() == eight.keys()
  for name in one:
    if "prec@1" in name:  # Logits may differ in the last bits; argmax rarely.
      assert abs(one[name] - eight[name]) <= 0.01, name
    else:
      assert one[name] == pytest.approx(eight[name], abs=1e-3), name


@pytest.mark.slow
def test_a_run_logs_fewshot_and_retrieval(digits_data_dir, tmp_path):
  from flexivit_jax.training import loop
  loop.train_and_evaluate(evals_config(keep_ckpt=1), str(tmp_path))
  rows = [r for r in runlog.read_metrics(str(tmp_path)) if "eval/fs/seqhw=2/digits_1shot" in r]
  assert [r["step"] for r in rows] == [4, 8]
  for r in rows:
    assert 0.0 <= r["eval/fs/seqhw=4/digits_5shot"] <= 1.0
    assert 0.0 <= r["eval/ret/seqhw=2/recall@1_vs_seqhw=4"] <= 1.0
