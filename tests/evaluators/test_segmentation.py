"""The segmentation evaluator: mIoU and pixel accuracy against hand computations, a full
pass over the bundled data (padding excluded), config checks, and 8 devices = 1 device."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import CLUTTERED_SMALL as SMALL, REPO
from sharded_eval import eval_on_1_and_8_devices
from flexivit_jax import evaluators
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators.segmentation import (SegmentationEvaluator, metrics_from_confusion,
                                                  segmentation_sums)

IGNORE = 255


def logits_of(pred, num_classes):
  return jax.nn.one_hot(jnp.asarray(pred), num_classes) * 5.0


def scores(labels, pred, mask, num_classes=4):
  sums = segmentation_sums(logits_of(pred, num_classes), jnp.asarray(labels), jnp.asarray(mask),
                           num_classes=num_classes, ignore_label=IGNORE)
  return metrics_from_confusion(np.asarray(sums["confusion"])), sums


def test_miou_of_hand_made_masks_equals_the_hand_computation():
  # Example 0 (real): class 3 is in no label and predicted only on the ignored pixel.
  # Example 1 (padding): anything, never counted.
  labels = np.array([[[0, 0, 1, 1], [2, IGNORE, 1, 0]],
                     [[3, 3, 3, 3], [3, 3, 3, 3]]])
  pred = np.array([[[0, 1, 1, 1], [0, 3, 1, 0]],
                   [[0, 0, 0, 0], [0, 0, 0, 0]]])
  metrics, sums = scores(labels, pred, [True, False])
  # class 0: label {00, 01, 13}, pred {00, 10, 13} -> 2 / 4; class 1: label {02, 03, 12},
  # pred {01, 02, 03, 12} -> 3 / 4; class 2: label {10}, pred {} -> 0 / 1; class 3: absent.
  assert metrics["miou"] == pytest.approx((2 / 4 + 3 / 4 + 0 / 1) / 3)
  assert metrics["pixel_acc"] == pytest.approx(5 / 7)
  assert int(sums["count"]) == 7
  np.testing.assert_array_equal(np.asarray(sums["confusion"]).sum(1), [3, 3, 1, 0])


def test_a_class_only_predicted_counts_as_zero_and_perfect_is_one():
  labels = np.array([[[0, 0], [1, 1]]])
  metrics, _ = scores(labels, np.array([[[0, 0], [1, 2]]]), [True], num_classes=3)
  # class 0: 1; class 1: 1 / 2; class 2 (predicted, never labelled): 0 / 1.
  assert metrics["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
  metrics, _ = scores(labels, labels, [True], num_classes=3)
  assert metrics == {"miou": 1.0, "pixel_acc": 1.0}
  metrics, _ = scores(np.full((1, 2, 2), IGNORE), labels, [True])
  assert np.isnan(metrics["miou"]) and np.isnan(metrics["pixel_acc"])


def test_labels_with_a_channel_axis_and_the_loss():
  labels = np.array([[[0, 1], [IGNORE, 1]]])
  logits = jnp.array([[[[2.0, 0.0], [0.0, 1.0]], [[9.0, -9.0], [1.0, 1.0]]]])
  a = segmentation_sums(logits, jnp.asarray(labels), jnp.asarray([True]), num_classes=2,
                        ignore_label=IGNORE)
  b = segmentation_sums(logits, jnp.asarray(labels[..., None]), jnp.asarray([True]),
                        num_classes=2, ignore_label=IGNORE)
  np.testing.assert_array_equal(a["confusion"], b["confusion"])
  nll = lambda z, y: -(z[y] - np.log(np.exp(z).sum()))
  expected = (nll(np.array([2.0, 0]), 0) + nll(np.array([0, 1.0]), 1)
              + nll(np.array([1.0, 1.0]), 1))
  assert float(a["loss"]) == pytest.approx(expected, rel=1e-5) and int(a["count"]) == 3


PP = 'decode|value_range(-1, 1)|seg_labels()|keep("image", "labels")'


def test_a_pass_over_the_split_scores_every_real_pixel_once(cluttered_small_dir):
  """A model that calls every pixel background: its mIoU is the background IoU over the
  classes present, computed here from the stored masks (100 images, batches of 16: the
  last batch holds 12 padding images, which must not count)."""
  masks = np.stack([ex["mask"][..., 0] for ex in tfds.data_source(
      SMALL, split="test", data_dir=cluttered_small_dir, download=False, try_gcs=False)])
  background = np.mean(masks == 0)
  present = len(np.unique(masks))
  seen = []

  def predict(params, images, flexi):
    seen.append(dict(flexi)["seqhw"])
    return jnp.zeros((*images.shape[:3], 11)).at[..., 0].set(params["bias"])

  ev = SegmentationEvaluator(predict, data=dict(name=SMALL, split="test", data_dir=cluttered_small_dir),
                             pp=PP, batch_size=16, num_classes=11, name="evals.seg")
  out = ev.run({"bias": 1.0}, [(("seqhw", 4),), (("seqhw", 8),)])
  for result in out.values():
    assert result["pixel_acc"] == pytest.approx(background)
    assert result["miou"] == pytest.approx(background / present)
  assert seen.count(4) == seen.count(8) == 7  # ceil(100 / 16) batches at each grid.


def test_registered_by_type_and_checked_against_the_task():
  cfg = dict(type="segmentation", data=dict(name="x", split="test"), pp="decode")
  evaluators.check_config("evals.seg", cfg, 11, task="segmentation")
  assert evaluators.evaluator_class("evals.seg", cfg) is SegmentationEvaluator
  with pytest.raises(UserError, match="scores segmentation but config task='classification'"):
    evaluators.check_config("evals.seg", cfg, 11, task="classification")
  with pytest.raises(UserError, match="set evals.t.type to one of \\['segmentation'\\]"):
    evaluators.check_config("evals.t", dict(cfg, type="classification"), 11,
                            task="segmentation")
  with pytest.raises(UserError, match="ignore_label must be an int"):
    evaluators.check_config("evals.seg", dict(cfg, ignore_label="x"), 11)
  with pytest.raises(UserError, match="label_mapping"):
    evaluators.check_config("evals.seg", dict(cfg, label_mapping=[1]), 11)


def test_labels_outside_the_classes_are_refused(cluttered_small_dir):
  ev = SegmentationEvaluator(lambda p, x, f: jnp.zeros((*x.shape[:3], 5)),
                             data=dict(name=SMALL, split="test", data_dir=cluttered_small_dir),
                             pp=PP, batch_size=16, num_classes=5, name="evals.seg")
  with pytest.raises(UserError, match="evals.seg: the labels hold [5-9].*0..4"):
    ev.run({}, [(("seqhw", 4),)])


@pytest.mark.slow
def test_sharded_eval_on_8_devices_equals_one_device(cluttered_small_dir):
  """Batches of 20 on 8 devices: each padded to 24; the 100 test images, counted once."""
  out = eval_on_1_and_8_devices(f"{REPO}/configs/seg_cluttered.py:runlocal", batch_size=20,
                                image_side=32, model_fields=dict(head_zeroinit=False),
                                data_dir=cluttered_small_dir)
  assert out["devices"] == 8
  assert set(out["8"]) == {f"eval/test/seqhw={s}/{m}" for s in (2, 4)
                           for m in ("miou", "pixel_acc")}
  for key, value in out["1"].items():
    assert out["8"][key] == pytest.approx(value, abs=1e-9), key
  assert 0 < out["1"]["eval/test/seqhw=4/miou"] < 1


# A tiny Segmenter backbone (add its depth) for the evaluate CLI's `--model`.
SEGMENTER_FIELDS = dict(width=16, num_heads=2, mlp_dim=32, patch_size=[8, 8],
                        posemb_size=[4, 4], head_zeroinit=False)


def save_segmenter(path, fields) -> str:
  """A Segmenter of the 11 cluttered-digits pixel classes on a FlexiViT of `fields`,
  initialised at 64 px, saved as an npz at `path` (returned as a string)."""
  from flexivit_jax.checkpoints import npz
  from flexivit_jax.models import tasks
  model = tasks.from_config({**fields, "num_classes": 11}, "segmentation")
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), seqhw=4)["params"]
  npz.save_params(str(path), params)
  return str(path)


def test_evaluate_cli_reports_miou_and_gflops_per_grid(cluttered_small_dir, tmp_path, capsys):
  """`python -m flexivit_jax.evaluate --task segmentation` on a Segmenter npz."""
  from flexivit_jax import evaluate
  fields = dict(SEGMENTER_FIELDS, depth=1)
  checkpoint = save_segmenter(tmp_path / "seg.npz", fields)
  evaluate.main(["--checkpoint", checkpoint, "--task", "segmentation",
                 "--model", json.dumps(fields), "--data", f"{SMALL}:test",
                 "--data_dir", cluttered_small_dir, "--pp", PP, "--seqhw", "4,8",
                 "--batch_size", "50", "--out", str(tmp_path / "out"), "--progress=none"])
  printed = capsys.readouterr().out
  assert "mIoU" in printed and "pixel acc" in printed
  rows = json.loads((tmp_path / "out" / "eval_segmentation.json").read_text())
  assert [r["seqhw"] for r in rows] == [4, 8] and [r["patch"] for r in rows] == [16, 8]
  assert all(0 < r["miou"] < 1 and 0 < r["pixel_acc"] <= 1 for r in rows)
  assert 0 < rows[0]["gflops"] < rows[1]["gflops"]
  assert (tmp_path / "out" / "eval_segmentation.png").exists()


def test_one_registry_and_segmentation_logs_through_log_values():
  """The merged registry holds every type; segmentation says what it logs the way the
  others do (`output_name`, `log_values`): miou first, then pixel_acc."""
  assert set(evaluators.TYPES) == {"classification", "fewshot", "fewshot_lsr", "retrieval",
                                   "segmentation"}
  cfg = dict(type="segmentation", data=dict(name="x", split="test"), pp="decode")
  assert evaluators.output_name("evals.seg", cfg) == "logits"
  flexi = (("seqhw", 4),)
  logged = SegmentationEvaluator.log_values(
      None, {flexi: {"miou": 0.25, "pixel_acc": 0.9, "loss": 1.0, "img_per_s": 3.0}})
  assert logged == {(flexi, "miou"): 0.25, (flexi, "pixel_acc"): 0.9}
  for kind in ("fewshot", "retrieval"):
    assert evaluators.TYPES[kind].TASK == "classification"


def test_eval_config_of_a_scanned_segmenter_runs_the_segmentation_sweep(cluttered_small_dir, tmp_path,
                                                                        capsys):
  """`--eval_config` with type segmentation scores a Segmenter whose backbone scans: the
  per-block npz is restacked for the backbone, and the CLI routes to the mIoU sweep."""
  from flexivit_jax import evaluate
  fields = dict(SEGMENTER_FIELDS, depth=2)
  checkpoint = save_segmenter(tmp_path / "seg.npz", fields)
  cfg = dict(type="segmentation", data=dict(name=SMALL, split="test"), pp=PP)
  evaluate.main(["--checkpoint", checkpoint, "--eval_config", repr(cfg),
                 "--model", json.dumps({**fields, "scan": True}), "--data_dir", cluttered_small_dir,
                 "--seqhw", "4", "--batch_size", "50", "--progress=none"])
  printed = capsys.readouterr().out
  assert "mIoU" in printed and "pixel acc" in printed
