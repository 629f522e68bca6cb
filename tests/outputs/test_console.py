"""What a person watching a run sees: progress modes, lines with rate and ETA, durations."""
import pytest

from flexivit_jax.outputs import console


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


def test_duration_formats():
  assert [console.format_duration(s) for s in (7.2, 190, 3725)] == ["7s", "3m10s", "1h02m"]
