"""The evaluator registry: built by `type`, each type checks the config keys it owns."""
import numpy as np
import pytest

from flexivit_jax import evaluators
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.classification import ClassificationEvaluator

OK = dict(data=dict(name="sklearn_digits", split="test"), pp="decode", batch_size=8)


def test_build_dispatches_on_type_and_passes_only_the_class_keys():
  predict = lambda params, images, flexi: images
  built = evaluators.build("evals.val", {**OK, "type": "classification", "log_steps": 5,
                                         "label_mapping": [1, 0]}, predict, num_classes=2)
  assert isinstance(built, ClassificationEvaluator)
  assert built.predict_fn is predict and built.batch_size == 8 and built.name == "evals.val"
  assert built.label_mapping.tolist() == [1, 0]
  assert isinstance(evaluators.build("evals.val", OK, predict), ClassificationEvaluator)


@pytest.mark.parametrize("cfg,message", [
    ({**OK, "type": "fewshots"}, r"evals.val.type=.fewshots. is unknown; allowed: classification, fewshot"),
    ({**OK, "bs": 3}, r"unknown config key 'evals.val.bs'.*allowed there: batch_size, data"),
    ({"pp": "decode"}, r"evals.val needs 'data' and 'pp'"),
    ({**OK, "batch_size": 0}, r"evals.val.batch_size must be a positive int"),
    ({**OK, "log_steps": 0}, r"evals.val: config key 'log_steps' must be a positive int"),
    ({**OK, "log_steps": 2, "log_percent": 0.5}, "give log_steps or log_percent, not both"),
    ({**OK, "log_percent": 2.0}, r"evals.val.log_percent=2.0 must be a fraction"),
    ({**OK, "label_mapping": [10]}, "outside"),
    ("{'type': 'fewshot'}", "must be a dict of evaluator keys"),
])
def test_config_checks_are_one_user_error(cfg, message):
  with pytest.raises(UserError, match=message):
    evaluators.check_config("evals.val", cfg, num_classes=10)


def test_a_good_config_passes_and_names_every_allowed_key():
  evaluators.check_config("evals.val", {**OK, "log_percent": 0.5, "label_mapping": [9, 0]}, 10)
  allowed = evaluators.COMMON_KEYS + ClassificationEvaluator.KEYS
  assert sorted(allowed) == ["batch_size", "data", "label_mapping", "log_percent", "log_steps",
                             "pp", "type"]


def test_batch_shapes_must_fit_the_label_map_and_the_model():
  evaluator = evaluators.build("evals.val", {**OK, "label_mapping": [2, 1, 0]}, None,
                               num_classes=10)
  evaluator.check_batch_shapes({"image": (8, 4, 4, 3), "labels": (8, 3)})
  with pytest.raises(UserError, match="label_mapping has 3 entries but its pp makes labels "
                                      "with 10 classes"):
    evaluator.check_batch_shapes({"image": (8, 4, 4, 3), "labels": (8, 10)})
  with pytest.raises(UserError, match="no 'labels' to score against"):
    evaluator.check_batch_shapes({"image": (8, 4, 4, 3)})
  plain = evaluators.build("evals.val", OK, None, num_classes=10)
  with pytest.raises(UserError, match="the model has 10 classes but its pp makes labels with 3"):
    plain.check_batch_shapes({"image": (8, 4, 4, 3), "labels": (8, 3)})
  sums = evaluator.batch_sums(np.eye(10, dtype=np.float32)[[0, 1]], np.eye(3)[[2, 2]],
                              np.ones(2, bool))
  assert (float(sums["top1"]), float(sums["count"])) == (1, 2)  # Model class 0 = dataset 2.
