"""Text tables: the one layout (`format_rows`) and every table laid out by it."""
from flexivit_jax.outputs import tables


def test_rows_are_right_aligned_under_a_rule_with_floats_at_two_decimals():
  text = tables.format_rows(["name", "top-1"], [["a", 97.0], ["long name", "5.5%"]])
  assert text.splitlines() == ["     name  top-1",
                               "---------  -----",
                               "        a  97.00",
                               "long name   5.5%"]


def test_patch_keyed_evals_show_their_patch():
  curves = {"test": {(("patch_size", (8, 8)),): 0.9, (("patch_size", (16, 16)),): 0.5,
                     (("seqhw", 12),): 0.7}}
  lines = tables.format_table(curves, image_size=48).splitlines()
  assert lines[0].split() == ["seqhw", "patch", "test", "prec@1"]
  assert [l.split() for l in lines[2:]] == [["3", "16", "50.00%"], ["6", "8", "90.00%"],
                                            ["12", "4", "70.00%"]]


def test_forward_gflops_add_a_last_column_where_known():
  curves = {"test": {(("seqhw", 3),): 0.5, (("seqhw", 6),): 0.9}}
  lines = tables.format_table(curves, 48, gflops={(("seqhw", 6),): 0.01234}).splitlines()
  assert lines[0].split() == ["seqhw", "patch", "test", "prec@1", "GFLOPs/img"]
  assert [l.split() for l in lines[2:]] == [["3", "16", "50.00%", "-"],
                                            ["6", "8", "90.00%", "0.01234"]]


def test_eval_line_names_every_grid_of_every_evaluator():
  row = {"eval/test/seqhw=4/prec@1": 0.55, "eval/test/seqhw=2/prec@1": 0.412, "train/loss": 1}
  assert tables.format_eval_line(row) == "test prec@1  seqhw 2 41.20%  seqhw 4 55.00%"


def test_compute_table_has_a_line_per_run_and_eval_point():
  lines = tables.format_compute_table({"curr": [(10.0, 0.5), (20.0, 0.8)],
                                       "base": [(12.0, 0.4)]}, seqhw=8).splitlines()
  assert lines[0].split() == ["run", "train", "GFLOPs", "prec@1", "(seqhw=8)"]
  assert [l.split() for l in lines[2:]] == [["curr", "10.0", "50.00%"],
                                            ["curr", "20.0", "80.00%"],
                                            ["base", "12.0", "40.00%"]]


def test_eval_rows_as_a_table_coarse_to_fine_and_as_progress_lines():
  rows = [{"seqhw": 8, "patch": 6, "tokens": 64, "top1": 0.9, "top5": 1.0, "loss": 0.3,
           "gflops": 0.02, "img_per_s": 900.0},
          {"seqhw": 4, "patch": [12, 12], "tokens": 16, "top1": 0.5, "top5": 0.9, "loss": 1.2,
           "gflops": None, "img_per_s": 1000.4}]
  lines = tables.format_eval_table(rows).splitlines()
  assert lines[0].split() == ["seqhw", "patch", "tokens", "top-1", "top-5", "loss",
                              "GFLOPs/img", "img/s"]
  assert lines[2].split() == ["4", "[12,", "12]", "16", "50.00%", "90.00%", "1.2000", "-",
                              "1000"]
  assert lines[3].split() == ["8", "6", "64", "90.00%", "100.00%", "0.3000", "0.02", "900"]
  assert tables.format_eval_row(rows[0]) == (
      "seqhw 8 (patch 6)  top1 90.00%  loss 0.3000  0.02 GFLOPs/img  900 img/s")
  assert tables.format_eval_row(rows[1]) == (
      "seqhw 4 (patch 12x12)  top1 50.00%  loss 1.2000  1000 img/s")
