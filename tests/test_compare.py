"""`compare`: runs' accuracy per patch size on one table and plot, and its errors."""
import json

import pytest

from flexivit_jax import compare
from flexivit_jax.outputs import runlog


def _fake_run(workdir, accs, pp='decode|resize(48)|value_range(-1,1)'):
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({"input": {"pp": pp}}))
  writer = runlog.MetricWriter(str(workdir))
  writer.write(10, {"train/loss": 1.0, "seqhw": 3})
  writer.write(10, {f"eval/test/seqhw={s}/prec@1": a for s, a in accs.items()})
  writer.close()
  return str(workdir)


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
