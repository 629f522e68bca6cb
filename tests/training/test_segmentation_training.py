"""Segmentation in the trainer: the per-pixel loss, the task/ignore_label keys, a FlexiViT
checkpoint into a Segmenter's backbone, and the segmentation configs under runlocal."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REF_CKPT, REF_MODEL, load_config
from flexivit_jax.checkpoints import sources
from flexivit_jax.errors import UserError
from flexivit_jax.models import tasks
from flexivit_jax.outputs import runlog
from flexivit_jax.training import initial_state, loop, losses


def test_pixel_xent_averages_over_labelled_pixels_only():
  logits = jnp.array([[[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]],
                       [[5.0, 1.0, 1.0], [-2.0, 3.0, 0.5]]]])
  labels = jnp.array([[[2, 255], [0, 1]]])
  log_softmax = lambda z: z - np.log(np.exp(z).sum())
  hand = -(log_softmax(np.array([1.0, 0, -1]))[2] + log_softmax(np.array([5.0, 1, 1]))[0]
           + log_softmax(np.array([-2.0, 3, 0.5]))[1]) / 3
  assert float(losses.pixel_softmax_xent(logits, labels, 255)) == pytest.approx(hand, rel=1e-6)
  assert float(losses.pixel_softmax_xent(logits, labels[..., None], 255)) == pytest.approx(
      hand, rel=1e-6)
  assert float(losses.pixel_softmax_xent(logits, jnp.full((1, 2, 2), 7), 7)) == 0.0
  grad = jax.grad(lambda z: losses.pixel_softmax_xent(z, labels, 255))(logits)
  assert not np.asarray(grad)[0, 0, 1].any()  # The ignored pixel gets no gradient.


def test_the_segmentation_config_builds_a_segmenter():
  c = load_config("seg_cluttered.py:runlocal")
  assert c.task == "segmentation" and c.ignore_label == 255
  model = tasks.from_config(c.model, c.task)
  assert tasks.is_segmenter(model) and model.num_classes == 11


@pytest.mark.parametrize("overrides,match", [
    (dict(task="segmentaton"), "task='segmentaton'.*did you mean 'segmentation'"),
    (dict(ignore_label="x"), "ignore_label"),
    (dict(**{"mixup.p": 0.2}), "unset config key\\(s\\) mixup.p"),
    (dict(loss="sigmoid_xent"), "loss"),
    (dict(init_head_bias=-10.0), "init_head_bias"),
    (dict(**{"evals.test.type": "classification"}), "evals.test.type='classification' scores "
     "classification but config task='segmentation'"),
])
def test_bad_segmentation_keys_fail_before_anything_runs(overrides, match):
  with pytest.raises(UserError, match=match):
    load_config("seg_cluttered.py:runlocal", **overrides)


def test_a_classification_eval_on_a_segmentation_run_and_back_fail():
  with pytest.raises(UserError, match="scores segmentation but config task='classification'"):
    load_config("seg_cluttered.py:runlocal", task="classification")


def test_flexivit_checkpoint_loads_into_the_backbone_head_dropped():
  fields = {k: v for k, v in REF_MODEL.items() if k != "num_classes"}
  seg = tasks.from_config({**fields, "num_classes": 4}, "segmentation")
  init = jax.tree.map(np.asarray, seg.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                           seqhw=2)["params"])
  config = ml_collections.ConfigDict(dict(model_load=dict(dont_load=())))
  params = initial_state.load_model_init(config, seg, init, str(REF_CKPT))
  ref = sources.load_params(str(REF_CKPT))
  np.testing.assert_array_equal(params["backbone"]["embedding"]["kernel"],
                                ref["embedding"]["kernel"])
  np.testing.assert_array_equal(params["decoder"]["kernel"], init["decoder"]["kernel"])
  assert "head" not in params["backbone"]
  # A Segmenter's own params (with backbone/) load whole.
  again = initial_state.load_model_init(config, seg, init, params)
  jax.tree.map(np.testing.assert_array_equal, again, params)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seg_cluttered.py", "seg_ade20k.py"])
def test_segmentation_configs_run_two_steps_under_runlocal(tmp_path, name):
  c = load_config(f"{name}:runlocal", total_steps=2, progress="none", log_training_steps=1)
  out = loop.train_and_evaluate(c, str(tmp_path))
  rows = runlog.read_metrics(str(tmp_path))
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]
  final = [r for r in rows if any(k.startswith("eval/") for k in r)][-1]
  mious = {k: v for k, v in final.items() if k.endswith("/miou")}
  assert len(mious) == 2 and all(0 < v <= 1 for v in mious.values())
  assert all(0 < v <= 1 for k, v in final.items() if k.endswith("/pixel_acc"))
  assert np.isfinite(out["train/loss"]) and list(tmp_path.glob("eval_*.png"))
