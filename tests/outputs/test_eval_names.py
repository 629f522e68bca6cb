"""Eval metric names: written and parsed back, and the curves read off a metrics row."""
from flexivit_jax.outputs import eval_names


def test_eval_metric_names_round_trip_and_patch_keyed_evals_read_back():
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
