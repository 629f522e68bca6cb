"""metrics.jsonl writing/resume, the accuracy table, and the run comparison tool."""
import json

import pytest

from flexivit_jax import compare, metrics


def _fake_run(workdir, accs, pp='decode|resize(48)|value_range(-1,1)'):
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"input": {"pp": pp}}))
  writer = metrics.MetricWriter(str(workdir))
  writer.write(10, {"train/loss": 1.0, "seqhw": 3})
  writer.write(10, {f"eval/test/seqhw={s}/prec@1": a for s, a in accs.items()})
  writer.close()
  return str(workdir)


def test_writer_drops_rows_past_the_resumed_step(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  metrics.MetricWriter(str(tmp_path), resume_step=2).close()
  assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2]


def test_table_and_compare_plot(tmp_path):
  a = _fake_run(tmp_path / "flexi", {3: 0.97, 6: 0.99, 12: 0.98})
  b = _fake_run(tmp_path / "base", {3: 0.25, 6: 0.98, 12: 0.70})
  table = compare.compare([a, b], out=str(tmp_path / "cmp.png"))
  lines = table.splitlines()
  assert lines[0].split() == ["seqhw", "patch", "flexi", "prec@1", "base", "prec@1"]
  assert lines[2].split() == ["3", "16", "97.00%", "25.00%"]
  assert lines[4].split() == ["12", "4", "98.00%", "70.00%"]
  assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
  assert compare.image_size_of(a) == 48


def test_compare_errors_name_the_workdir(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty has no metrics.jsonl"):
    compare.compare([str(tmp_path / "empty")])
  run = _fake_run(tmp_path / "run", {3: 0.5})
  with pytest.raises(ValueError, match="has no evaluator 'val'; it has \\['test'\\]"):
    compare.compare([run], evaluator="val")


def test_eval_metric_names_round_trip_and_patch_keyed_evals_show_their_patch():
  for key in [(("seqhw", 4),), (("seqhw", (4, 6)),), (("patch_size", (8, 8)),)]:
    name = metrics.eval_metric_name("test", key)
    assert metrics.parse_eval_metric_name(name) == ("test", key, "prec@1")
  assert metrics.eval_metric_name("test", (("patch_size", (8, 8)),)) == \
      "eval/test/patch_size=8x8/prec@1"
  row = {"step": 5, "eval/test/patch_size=8x8/prec@1": 0.9,
         "eval/test/patch_size=16x16/prec@1": 0.5, "eval/test/seqhw=12/prec@1": 0.7}
  curves = metrics.final_eval_curves([row])
  assert curves == {"test": {(("patch_size", (8, 8)),): 0.9, (("patch_size", (16, 16)),): 0.5,
                             (("seqhw", 12),): 0.7}}
  lines = metrics.format_table(curves, image_size=48).splitlines()
  assert [l.split() for l in lines[2:]] == [["3", "16", "50.00%"], ["6", "8", "90.00%"],
                                            ["12", "4", "70.00%"]]


def test_progress_bar_auto_needs_a_terminal():
  assert metrics.show_progress_bar(True) and not metrics.show_progress_bar(False)
  # Under pytest stdout is captured (not a terminal): 'auto' shows no bar.
  assert not metrics.show_progress_bar("auto")
