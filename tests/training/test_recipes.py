"""The paper's experiments as configs: every config under runlocal, curricula, transfer, eval padding."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, load_config
from sharded_eval import eval_on_1_and_8_devices
from flexivit_jax import compare
from flexivit_jax.checkpoints import sources, step_dirs
from flexivit_jax.outputs import runlog
from flexivit_jax.checkpoints import manager
from flexivit_jax.training import compiled_steps
from flexivit_jax.training import loop
from flexivit_jax.training import sharding
from flexivit_jax.training.flexi import FlexiSampler

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def quick(spec, **overrides):
  base = dict(total_steps=2, progress_bar=False, log_training_steps=1, ckpt_steps=1000)
  return load_config(spec, **{**base, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_runs_two_steps_under_runlocal(digits_data_dir, tmp_path, name):
  out = loop.train_and_evaluate(quick(f"{name}:runlocal"), str(tmp_path))
  rows = runlog.read_metrics(str(tmp_path))
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2]
  gflops = [r["compute/gflops"] for r in train]
  assert 0 < gflops[0] < gflops[1]
  evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
  assert evals and evals[-1]["step"] == 2
  accs = [v for k, v in evals[-1].items() if k.endswith(("prec@1", "miou"))]
  assert accs and all(0.0 <= a <= 1.0 for a in accs)
  assert np.isfinite(out["train/loss"])


def test_full_recipes_complete_with_the_reference_settings():
  """The paper-scale forms: hyperparameters of SPEC 5/7 (nothing runs)."""
  c = load_config("i1k_deit3_distill.py:variant=S,epochs=300")
  assert (c.input.batch_size, c.lr, c.wd, c.total_epochs) == (1024, 1e-4, 1e-5, 300)
  assert c.mixup.p == 1.0 and c.schedule.warmup_steps == 5000
  assert c.model_init.endswith("bv_deit_3_small_384_1k.npz")
  assert c.distill.teachers.prof.init == c.model_init
  assert c.flexi.seqhw.v == (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)
  sup = load_config("i21k_sup.py")
  assert (sup.loss, sup.init_head_bias, sup.input.batch_size) == ("sigmoid_xent", -10.0, 4096)
  dist = load_config("i21k_distill.py")
  assert dist.distill.teachers.prof.model.variant == "B/8" and dist.input.batch_size == 4096
  tr = load_config("transfer.py:dataset=cifar10,seqhw=8")
  assert (tr.optax_name, tr.lr, tr.wd, tr.input.batch_size, tr.total_steps) == (
      "big_vision.momentum_hp", 0.01, 0.0, 512, 10_000)
  assert tr.flexi.seqhw.v == (8,) and len(tr.eval_flexi["seqhw"]["v"]) == 10
  with pytest.raises(ValueError, match="variant='XL'"):
    load_config("i1k_deit3_distill.py:variant=XL")


def test_curriculum_recipe_matches_the_baseline_compute():
  curr, base = load_config("i21k_curriculum.py"), load_config("i21k_curriculum.py:baseline")
  assert base.flexi.seqhw.v == (15,) and base.model.patch_size == (16, 16)
  assert curr.flexi.seqhw[-1]["v"] == (15,) and curr.flexi.seqhw[-1]["until"] == 1.0
  assert curr.total_epochs > base.total_epochs  # Cheaper steps early: more of them.


class CompileSpy:
  """Records every new (CompiledSteps instance, flexi) compilation."""

  def __init__(self, monkeypatch):
    self.calls = []
    original = compiled_steps.CompiledSteps.compile

    def compile(steps, flexi, *args):
      if flexi not in steps._compiled:  # pylint: disable=protected-access
        self.calls.append((id(steps), flexi))
      return original(steps, flexi, *args)
    monkeypatch.setattr(compiled_steps.CompiledSteps, "compile", compile)

  def per_instance(self):
    out = {}
    for key, flexi in self.calls:
      out.setdefault(key, []).append(dict(flexi)["seqhw"])
    return list(out.values())


@pytest.mark.slow
def test_curriculum_run_compiles_each_value_once_and_follows_the_stages(
    digits_data_dir, tmp_path, monkeypatch):
  spy = CompileSpy(monkeypatch)
  config = quick("demo_curriculum.py:runlocal", total_steps=8, aot_compile=True)
  loop.train_and_evaluate(config, str(tmp_path))
  train = [r for r in runlog.read_metrics(str(tmp_path)) if "train/loss" in r]
  sampler = FlexiSampler(config.flexi, seed=config.seed, total_steps=8)
  assert [r["seqhw"] for r in train] == [sampler(s)["seqhw"] for s in range(8)]
  assert {r["seqhw"] for r in train[4:]} == {4}  # Stage 2 (until=1.0) draws only 4.
  assert {r["seqhw"] for r in train[:4]} <= {1, 2}
  compiled = spy.per_instance()
  train_compiles = max(compiled, key=len)
  assert sorted(train_compiles) == [1, 2, 4]  # Each distinct value once, nothing else.
  # compute/gflops = sum over steps of the compiled cost of that step's value.
  per_value = {}
  for prev, row in zip([{"compute/gflops": 0.0}] + train, train):
    per_value.setdefault(row["seqhw"], set()).add(
        round(row["compute/gflops"] - prev["compute/gflops"], 6))
  assert all(len(v) == 1 for v in per_value.values()), per_value
  assert per_value[1].pop() < per_value[2].pop() < per_value[4].pop()


def test_pad_batch_masks_the_padding():
  local = {"image": np.ones((5, 2, 2, 3)), "labels": np.ones((5, 3)),
           "_mask": np.array([True, True, True, False, True])}
  out = sharding.pad_batch(local, 4)
  assert out["image"].shape == (8, 2, 2, 3)
  np.testing.assert_array_equal(out["_mask"], [True, True, True, False, True, False, False,
                                               False])
  assert not out["labels"][5:].any()
  assert sharding.pad_batch(local, 5)["image"].shape == (5, 2, 2, 3)


@pytest.mark.slow
def test_eval_batch_of_100_runs_on_8_devices(digits_data_dir):
  out = eval_on_1_and_8_devices(f"{REPO}/configs/demo_digits.py:runlocal", batch_size=100,
                                image_side=16)
  assert out["devices"] == 8
  assert out["1"] == out["8"] and len(out["8"]) == 2
  # Prec@1 over the 300 test digits: a multiple of 1/300, so padding was not counted.
  for acc in out["8"].values():
    assert abs(acc * 300 - round(acc * 300)) < 1e-6


# The offline transfer demo (digits 0-4 -> 5-9) runs as docs/recipes.md writes it, in
# tests/test_docs_commands.py.


STEPS = 12
RESUME_FLAGS = [f"--config.total_steps={STEPS}", "--config.ckpt_steps=3",
                "--config.log_training_steps=1", "--config.log_eval_steps=100",
                "--config.progress_bar=False"]


def _train_cmd(workdir, cache):
  # The three runs share traced steps and executables (config.compile_cache_dir).
  return [sys.executable, "-m", "flexivit_jax.train", "--config",
          f"{REPO}/configs/demo_curriculum.py:runlocal", "--workdir", str(workdir),
          *RESUME_FLAGS, f"--config.compile_cache_dir={cache}"]


@pytest.mark.slow
def test_curriculum_after_sigkill_and_resume_is_the_same_run(digits_data_dir, tmp_path):
  full, killed, cache = tmp_path / "full", tmp_path / "killed", tmp_path / "cache"
  subprocess.run(_train_cmd(full, cache), cwd=REPO, check=True, capture_output=True, timeout=900)
  kill_at = random.Random().randint(4, 9)
  proc = subprocess.Popen(_train_cmd(killed, cache), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if any(r.get("step", 0) >= kill_at for r in runlog.read_metrics(str(killed))):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, kill_at
  assert STEPS not in step_dirs.complete_steps(str(killed))  # (An async save may be cut.)
  subprocess.run(_train_cmd(killed, cache), cwd=REPO, check=True, capture_output=True, timeout=900)
  ref = [r for r in runlog.read_metrics(str(full)) if "train/loss" in r]
  got = [r for r in runlog.read_metrics(str(killed)) if "train/loss" in r]
  assert [r["step"] for r in got] == list(range(1, STEPS + 1))
  for key in ("seqhw", "compute/gflops", "train/loss"):
    assert [r[key] for r in got] == [r[key] for r in ref], key
  a = manager.leaf_names(sources.read_state(str(full), STEPS))
  b = manager.leaf_names(sources.read_state(str(killed), STEPS))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_compare_plots_accuracy_against_compute(tmp_path):
  for name, points in (("curr", [(10.0, 0.5), (20.0, 0.8)]), ("base", [(12.0, 0.4), (24.0, 0.7)])):
    os.makedirs(tmp_path / name)
    with open(tmp_path / name / "metrics.jsonl", "w") as f:
      for i, (g, acc) in enumerate(points):
        f.write(json.dumps({"step": i + 1, "train/loss": 1.0, "compute/gflops": g}) + "\n")
        f.write(json.dumps({"step": i + 1, "eval/test/seqhw=8/prec@1": acc,
                            "eval/test/seqhw=4/prec@1": acc / 2, "compute/gflops": g}) + "\n")
  table = compare.compare_flops([str(tmp_path / "curr"), str(tmp_path / "base")],
                                str(tmp_path / "c.png"))
  assert "seqhw=8" in table and "80.00%" in table and "70.00%" in table
  assert (tmp_path / "c.png").stat().st_size > 1000
  assert "40.00%" in compare.compare_flops([str(tmp_path / "curr")], seqhw=4)
  with pytest.raises(ValueError, match="no evaluation at seqhw=6"):
    compare.compare_flops([str(tmp_path / "curr")], seqhw=6)
