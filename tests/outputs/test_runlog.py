"""metrics.jsonl: written by the run, cut back to the resumed step."""
from flexivit_jax.outputs import runlog


def test_writer_drops_rows_past_the_resumed_step(tmp_path):
  writer = runlog.MetricWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    writer.write(step, {"train/loss": float(step)})
  writer.close()
  runlog.MetricWriter(str(tmp_path), resume_step=2).close()
  assert [r["step"] for r in runlog.read_metrics(str(tmp_path))] == [1, 2]
