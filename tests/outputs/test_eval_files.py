"""eval.json / eval.csv of the evaluate CLI: written, read back, refused when malformed."""
import csv
import json

import pytest

from flexivit_jax.errors import UserError
from flexivit_jax.outputs import eval_files, tables


def test_report_round_trip_and_format(tmp_path):
  rows = [{"seqhw": 4, "patch": 12, "tokens": 16, "top1": 0.5, "top5": 0.9, "loss": 1.2,
           "gflops": 0.01, "img_per_s": 100.0}]
  eval_files.write_eval(str(tmp_path), rows)
  assert eval_files.read_eval(str(tmp_path)) == rows
  assert "50.00%" in tables.format_eval_table(rows)
  with open(tmp_path / "bad.json", "w") as f:
    json.dump([{"seqhw": 1}], f)
  with pytest.raises(UserError, match="not an eval.json"):
    eval_files.read_eval(str(tmp_path / "bad.json"))


def test_csv_has_a_row_per_grid_and_no_temporary_file_is_left(tmp_path):
  rows = [{"seqhw": s, "patch": [48 // s, 48 // s], "tokens": s * s, "top1": 0.5, "top5": 0.9,
           "loss": 1.2, "gflops": None, "img_per_s": 100.0} for s in (4, 8)]
  out = tmp_path / "new" / "eval"
  assert eval_files.write_eval(str(out), rows) == [str(out / "eval.json"), str(out / "eval.csv")]
  with open(out / "eval.csv", newline="") as f:
    read = list(csv.DictReader(f))
  assert [(r["seqhw"], r["patch"], r["gflops"]) for r in read] == [
      ("4", "[12, 12]", ""), ("8", "[6, 6]", "")]
  assert sorted(p.name for p in out.iterdir()) == ["eval.csv", "eval.json"]
  assert eval_files.has_eval(str(out)) and not eval_files.has_eval(str(tmp_path))
