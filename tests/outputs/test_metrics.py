"""metrics.jsonl writing/resume, the accuracy table, and the run comparison tool."""
import json

import pytest

from flexivit_jax import compare
from flexivit_jax.outputs import console
from flexivit_jax.outputs import eval_names
from flexivit_jax.outputs import runlog
from flexivit_jax.outputs import tables


def _fake_run(workdir, accs, pp='decode|resize(48)|value_range(-1,1)'):
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"input": {"pp": pp}}))
  writer = runlog.MetricWriter(str(workdir))
  writer.write(10, {"train/loss": 1.0, "seqhw": 3})
  writer.write(10, {f"eval/test/seqhw={s}/prec@1": a for s, a in accs.items()})
  writer.close()
  return str(workdir)


def test_writer_drops_rows_past_the_resumed_step(tmp_path):
  writer = runlog.MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  runlog.MetricWriter(str(tmp_path), resume_step=2).close()
  assert [r["step"] for r in runlog.read_metrics(str(tmp_path))] == [1, 2]


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
    name = eval_names.eval_metric_name("test", key)
    assert eval_names.parse_eval_metric_name(name) == ("test", key, "prec@1")
  assert eval_names.eval_metric_name("test", (("patch_size", (8, 8)),)) == \
      "eval/test/patch_size=8x8/prec@1"
  row = {"step": 5, "eval/test/patch_size=8x8/prec@1": 0.9,
         "eval/test/patch_size=16x16/prec@1": 0.5, "eval/test/seqhw=12/prec@1": 0.7}
  curves = eval_names.final_eval_curves([row])
  assert curves == {"test": {(("patch_size", (8, 8)),): 0.9, (("patch_size", (16, 16)),): 0.5,
                             (("seqhw", 12),): 0.7}}
  lines = tables.format_table(curves, image_size=48).splitlines()
  assert [l.split() for l in lines[2:]] == [["3", "16", "50.00%"], ["6", "8", "90.00%"],
                                            ["12", "4", "70.00%"]]


def test_progress_mode_auto_is_a_bar_on_a_terminal_and_lines_otherwise(monkeypatch):
  assert [console.progress_mode(m) for m in ("bar", "lines", "none")] == [
      "bar", "lines", "none"]
  # Under pytest stdout is captured (not a terminal): 'auto' prints lines.
  assert console.progress_mode("auto") == "lines"
  monkeypatch.setattr("sys.stdout.isatty", lambda: True)
  monkeypatch.setattr("sys.stderr.isatty", lambda: True)
  assert console.progress_mode("auto") == "bar"
  with pytest.raises(ValueError, match="progress 'loud' is unknown; allowed: auto, bar"):
    console.progress_mode("loud")


def test_progress_lines_say_step_fields_rate_and_eta(capsys, monkeypatch):
  clock = iter([100.0, 110.0, 130.0])  # Start, then one line after 10 s and 20 s more.
  monkeypatch.setattr(console.time, "perf_counter", lambda: next(clock))
  progress = console.Progress(100, 0, mode="lines", batch_size=8)
  progress.update(10)
  progress.log({"seqhw": 4, "loss": 0.4123456})
  progress.update(20)
  progress.log({"loss": "0.30"}, images_per_s=99.6)
  progress.line("checkpoint step 30 started")
  progress.write("the table")
  progress.close()
  assert capsys.readouterr().out.splitlines() == [
      "step 10/100  seqhw 4  loss 0.4123  8 img/s  ETA 1m30s",  # 1 step/s: 90 s to go.
      "step 30/100  loss 0.30  100 img/s  ETA 1m10s",
      "checkpoint step 30 started", "the table"]


def test_progress_none_and_other_processes_print_only_what_they_may(capsys):
  for mode, main_process, shown in (("none", True, ["table"]), ("lines", False, [])):
    progress = console.Progress(4, mode=mode, main_process=main_process)
    progress.update(4)
    progress.log({"loss": 1.0})
    progress.line("start")
    progress.write("table")
    progress.close()
    assert capsys.readouterr().out.splitlines() == shown, (mode, main_process)


def test_progress_timed_lines_at_most_every_interval_and_at_the_end(capsys, monkeypatch):
  now = [0.0]
  monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
  progress = console.Progress(5, mode="lines", unit="batch", every_s=30.0)
  for t in (10.0, 31.0, 40.0, 50.0, 52.0):  # A line after 31 s, then none until the end.
    now[0] = t
    progress.update(1, seqhw="4")
  assert [l.split("  ")[0] for l in capsys.readouterr().out.splitlines()] == [
      "batch 2/5", "batch 5/5"]


def test_duration_and_eval_line_formats():
  assert [console.format_duration(s) for s in (7.2, 190, 3725)] == ["7s", "3m10s", "1h02m"]
  row = {"eval/test/seqhw=4/prec@1": 0.55, "eval/test/seqhw=2/prec@1": 0.412, "train/loss": 1}
  assert tables.format_eval_line(row) == "test prec@1  seqhw 2 41.20%  seqhw 4 55.00%"
