"""metrics.jsonl: written by the run, cut back to the resumed step."""
from flexivit_jax.outputs import runlog


def test_writer_drops_rows_past_the_resumed_step(tmp_path):
  writer = runlog.MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  runlog.MetricWriter(str(tmp_path), resume_step=2).close()
  assert [r["step"] for r in runlog.read_metrics(str(tmp_path))] == [1, 2]


def test_a_url_workdir_is_written_at_the_url_not_in_a_local_folder(tmp_path, monkeypatch):
  """gs:// cannot be appended to, and os.makedirs("gs://b") would make a local `gs:` folder."""
  monkeypatch.chdir(tmp_path)
  workdir = "ram://runlog_test/run"
  writer = runlog.MetricWriter(workdir)
  for step in (1, 2, 3):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  assert [r["step"] for r in runlog.read_metrics(workdir)] == [1, 2, 3]
  runlog.MetricWriter(workdir, resume_step=2).close()
  assert [r["step"] for r in runlog.read_metrics(workdir)] == [1, 2]
  assert not list(tmp_path.iterdir())  # Nothing local, e.g. no `ram:` folder.
