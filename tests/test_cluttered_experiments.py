"""benchmarks/one_vs_many.py, finetune_coarse.py, curriculum_seeds.py and their helpers
(benchmarks/cluttered_runs.py), without training: the runs they build, the check before an
earlier run is adopted, their tables."""
import json
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import cluttered_runs  # noqa: E402
import one_vs_many  # noqa: E402
from flexivit_jax.training import config as config_lib  # noqa: E402


def test_separate_vits_store_their_own_size_and_train_only_there():
  c = config_lib.complete(cluttered_runs.vit_config(12, 400))
  assert c.model.patch_size == (12, 12) and c.model.posemb_size == (5, 5)
  assert c.flexi.seqhw.v == (5,) and c.eval_flexi["seqhw"]["v"] == (5,)


def test_the_distilled_student_starts_from_the_teacher_and_learns_from_it_only(tmp_path):
  c = config_lib.complete(one_vs_many.distill_config(400, str(tmp_path)))
  teacher = c.distill.teachers.prof
  assert c.model_init == teacher.init == str(tmp_path)
  assert teacher.model.to_dict() == c.model.to_dict() and teacher.call.seqhw == 8
  assert c.flexi.seqhw.v == one_vs_many.SEQHWS


def _finished_run(path, config):
  os.makedirs(path / "checkpoints" / "step_000000400")
  with open(path / "config.json", "w") as f:
    json.dump(config_lib.complete(config).to_dict(), f)
  row = {"step": 400, "compute/gflops": 10.0, **{f"eval/test/seqhw={s}/prec@1": s / 10
                                                 for s in one_vs_many.SEQHWS}}
  (path / "metrics.jsonl").write_text(json.dumps(row) + "\n")


def test_an_earlier_run_is_adopted_only_with_the_same_training_config(tmp_path):
  _finished_run(tmp_path / "demo", cluttered_runs.demo_config("steps=400"))
  with pytest.raises(SystemExit, match=r"\(differs in total_steps\)"):
    cluttered_runs.adopt_copy(str(tmp_path / "demo"), str(tmp_path / "a"),
                              cluttered_runs.demo_config("steps=500"))
  assert not (tmp_path / "a").exists()
  cluttered_runs.adopt_copy(str(tmp_path / "demo"), str(tmp_path / "b"),
                            cluttered_runs.demo_config("steps=400"))
  result = json.loads((tmp_path / "b" / "result.json").read_text())
  assert result["adopted"] and cluttered_runs.test_acc(result, 8) == pytest.approx(80.0)


def test_table_puts_each_separate_vit_at_its_own_patch():
  run = lambda curve: {"curves": {"test": {f"seqhw={s}": a for s, a in curve.items()}}}
  runs = {"teacher": run({s: 0.5 for s in one_vs_many.SEQHWS}),
          "vit16": run({4: 0.1}), "vit12": run({5: 0.2}), "vit10": run({6: 0.3}),
          "flexi_scratch": run({s: 0.4 for s in one_vs_many.SEQHWS}),
          "flexi_distill": run({s: 0.45 for s in one_vs_many.SEQHWS})}
  rows = {r["patch"]: r for r in one_vs_many.table(runs)}
  assert rows[16]["separate_vit"] == pytest.approx(10.0) and rows[9]["separate_vit"] is None
  assert rows[8]["separate_vit"] == pytest.approx(50.0)
  assert rows[12]["flexi_distill"] == pytest.approx(45.0)


def test_finetune_coarse_pretrains_on_0_4_and_finetunes_on_5_9_at_one_grid(tmp_path):
  import finetune_coarse
  pre = config_lib.complete(finetune_coarse.pretrain_config(True, 400))
  assert pre.input.data.classes == (0, 1, 2, 3, 4) and pre.model.num_classes == 5
  assert "onehot(5," in pre.input.pp and len(pre.flexi.seqhw.v) == 5
  ft = config_lib.complete(finetune_coarse.finetune_config(str(tmp_path), 5, 100))
  assert ft.evals.test.data.classes == (5, 6, 7, 8, 9) and ft.flexi.seqhw.v == (5,)
  assert ft.eval_flexi["seqhw"]["v"] == finetune_coarse.SEQHWS
  assert ft.model_init == str(tmp_path) and ft.model_load.dont_load == ("head/.*",)


def _drawn_gflops(config, steps: int) -> float:
  """Estimated training compute of the patch sizes a config's sampler actually draws."""
  from flexivit_jax.training.curriculum import vit_image_flops
  from flexivit_jax.training.flexi import FlexiSampler
  sampler = FlexiSampler(config.flexi.to_dict(), seed=config.seed, total_steps=steps)
  m = config.model
  return sum(vit_image_flops(sampler(step)["seqhw"], width=m.width, depth=m.depth,
                             mlp_dim=m.mlp_dim) for step in range(steps))


def test_curriculum_arms_spend_equal_compute_end_at_the_target_and_differ_by_seed():
  import curriculum_seeds as cs
  arms = {arm: {s: config_lib.complete(c) for s, c in by.items()}
          for arm, by in cs.configs(300, cs.SEEDS, 50).items()}
  for seed in cs.SEEDS:
    cur, base = arms["curriculum"][seed], arms["vit8"][seed]
    assert cur.model.to_dict() == base.model.to_dict()  # Only the patch schedule differs.
    assert base.flexi.seqhw.v == (cs.TARGET,) and base.total_steps == 300
    stages = cur.flexi.seqhw
    assert stages[-1]["until"] == 1.0 and stages[-1]["v"] == (cs.TARGET,)
    assert max(stages[0]["v"]) < cs.TARGET and cur.total_steps > 400
    assert cur.eval_flexi["seqhw"]["v"] == base.eval_flexi["seqhw"]["v"] == (cs.TARGET,)
    assert cur.log_eval_steps == base.log_eval_steps == 50
    ratio = _drawn_gflops(cur, cur.total_steps) / _drawn_gflops(base, base.total_steps)
    assert ratio == pytest.approx(1.0, abs=0.02)
  assert [arms["curriculum"][s].seed for s in cs.SEEDS] == list(cs.SEEDS)
  assert len({arms["vit8"][s].seed for s in cs.SEEDS}) == len(cs.SEEDS)


def test_curriculum_summary_says_whether_the_difference_exceeds_the_seed_spread(tmp_path):
  import curriculum_seeds as cs
  points = lambda accs, per: [dict(step=50 * (i + 1), gflops=per * (i + 1), acc=a)
                              for i, a in enumerate(accs)]
  apart = {"curriculum": {0: points([10, 30], 100), 1: points([12, 32], 100)},
           "vit8": {0: points([10, 20], 100), 1: points([11, 21], 100)}}
  s = cs.summarize(apart)
  assert s["diff_of_means"] == pytest.approx(10.5) and s["largest_seed_spread"] == 2
  assert s["exceeds_seed_spread"] and "exceeds the seed spread" in cs.verdict(s)
  assert s["arms"]["curriculum"]["at_half_compute_mean"] == pytest.approx(11.0)
  overlap = {"curriculum": apart["curriculum"], "vit8": {0: points([10, 29], 100),
                                                        1: points([11, 35], 100)}}
  assert "does not exceed" in cs.verdict(cs.summarize(overlap))
  assert "seed 1" in cs.table(s, (0, 1))
  assert os.path.getsize(cs.plot(apart, str(tmp_path / "c.png"), title="t")) > 0


def test_precision_demo_runs_differ_only_in_dtype_mm_and_the_table_subtracts_float32():
  import precision_demo
  f32, bf16 = (config_lib.complete(precision_demo.demo_config("digits", d, 100, 1)).to_dict()
               for d in precision_demo.DTYPES)
  assert f32["model"].pop("dtype_mm") == "float32" and bf16["model"].pop("dtype_mm") == "bfloat16"
  assert f32 == bf16 and f32["seed"] == 1 and f32["total_steps"] == 100
  run = lambda acc: {"curves": {"test": {f"seqhw={s}": a for s, a in acc.items()}}}
  rows = precision_demo.table({"float32": run({3: 0.9, 6: 0.95}),
                               "bfloat16": run({3: 0.92, 6: 0.94})}, "digits", (3, 6))
  assert [r["patch"] for r in rows] == [16, 8]
  assert [round(r["delta"], 6) for r in rows] == [2.0, -1.0]
  assert "| 16 | 3 | 90.0 | 92.0 | +2.0 |" in precision_demo.markdown(rows)


def test_cluttered_analyses_share_one_vs_many_runs_and_write_tables_and_plots(tmp_path,
                                                                             monkeypatch):
  """benchmarks/cluttered_analyses.py without training: the runs it trains are one_vs_many's
  teacher and FlexiViT from scratch (same folder names, same configs), and its tables and
  plots take the analyses' results."""
  import cluttered_analyses as ca
  trained = {}
  monkeypatch.setattr(cluttered_runs, "train",
                      lambda c, wd: trained.setdefault(os.path.basename(wd), c) and {})
  ca.train_runs(str(tmp_path), 400, adopt={})
  assert list(trained) == ["teacher", "flexi_scratch"]
  assert trained["teacher"].flexi.seqhw.v == (8,)
  assert trained["flexi_scratch"].flexi.seqhw.v == one_vs_many.SEQHWS
  assert trained["teacher"].to_dict() == cluttered_runs.quiet(
      cluttered_runs.demo_config("baseline,steps=400")).to_dict()
  ca.train_runs(str(tmp_path), 400, adopt={}, distilled=True)
  assert trained["flexi_distill"].model_init == str(tmp_path / "teacher")

  methods = ("vanilla", "area", "norm", "pi")
  resize = {"fixed_grid": {m: {str(p): 50.0 for p in ca.PATCHES} for m in methods},
            "fixed_image": {m: {str(p): 40.0 for p in ca.PATCHES if p >= 8} for m in methods}}
  acc = {n: {s: 30.0 for s in one_vs_many.SEQHWS} for n in ca.MODELS}
  printed = ca.resize_tables(resize, acc)
  assert "128px" in printed and "(b) image kept at 64 px" in printed
  layers = [{"block": b, "patch_tokens": 0.5, "pooled_token": 0.9} for b in range(4)]
  similarity = {n: {"per_layer": {str(g): layers for g in ca.COARSER},
                    "same_prediction_as_finest": {str(g): 25.0 for g in ca.COARSER}}
                for n in ("flexi_scratch", "teacher")}  # Without --distilled.
  printed = ca.cka_table(similarity, acc)
  assert "8 vs 4" in printed and "block 3 patch/cls" in printed and "0.50/0.90" in printed
  assert "25.0" in printed and "distilled" not in printed
  for path in (ca.plot_resize(resize, str(tmp_path / "r.png")),
               ca.plot_cka(similarity, str(tmp_path / "c.png"))):
    assert os.path.getsize(path) > 1000


@pytest.mark.parametrize("script", ["cluttered_runs", "fewshot_retrieval", "seg_patch_transfer",
                                    "cluttered_patch_sweep"])
def test_experiment_scripts_train_with_the_train_clis_xla_flags(script):
  """A run trained by an experiment script must be the run `train` gives for the same config:
  XLA:CPU's dot fusions change the float rounding, so the scripts set the CLI's flags too."""
  import subprocess
  from flexivit_jax import xla_env
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_env.KEEP_ENV)}
  code = (f"import os, sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import {script}; "
          "print(os.environ.get('XLA_FLAGS', ''))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=str(REPO)).stdout
  assert all(flag in out.split() for flag in xla_env.CPU_FLAGS), out
