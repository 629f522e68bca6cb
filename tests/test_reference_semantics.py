"""big_vision's config semantics: eval metric, label maps, several teachers, kernel loading."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import reference_model, user_config
from flexivit_jax import data, evaluators
from flexivit_jax.checkpoints import adapt
from flexivit_jax.evaluators import classification
from flexivit_jax.training import losses
from flexivit_jax.training import compiled_steps
from flexivit_jax.training import evals
from flexivit_jax.training import sharding
from flexivit_jax.training import config as config_lib
from flexivit_jax.models import vit
from flexivit_jax.models.vit import FlexiViT
from jax.sharding import NamedSharding, PartitionSpec as P

# ----------------------------------------------------------------------------
# Classification metric.


def _np_prec1(logits, labels, mask):
  """big_vision's evaluator, written out: weight = mask * max(row), hit = label at argmax."""
  w = mask * labels.max(axis=1)
  hit = labels[np.arange(len(labels)), logits.argmax(axis=1)]
  return (hit * w).sum() / w.sum()


def test_empty_label_rows_are_excluded():
  logits = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
  labels = np.eye(4, dtype=np.float32)[[0, 2, 2, 3]]
  labels[3] = 0  # ImageNet-ReaL: an image with no valid label.
  mask = np.array([1, 1, 1, 1], bool)
  sums = classification.classification_sums(logits, labels, mask)
  correct, count = sums["top1"], sums["count"]
  assert float(count) == 3 and float(correct) == 2  # 2/3, not 2/4.
  assert float(correct) / float(count) == pytest.approx(_np_prec1(logits, labels, mask))
  # Padding examples (mask False) drop out as well.
  sums = classification.classification_sums(logits, labels, np.array([1, 1, 0, 0], bool))
  assert (float(sums["top1"]), float(sums["count"])) == (1, 2)


def test_smoothed_labels_are_not_all_hits():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 10)).astype(np.float32)
  ids = rng.integers(0, 10, 64)
  on, off = 0.9, 0.1 / 9
  labels = np.full((64, 10), off, np.float32)
  labels[np.arange(64), ids] = on
  sums = classification.classification_sums(logits, labels, np.ones(64, bool))
  got = float(sums["top1"]) / float(sums["count"])
  true_acc = (logits.argmax(1) == ids).mean()
  assert got == pytest.approx(_np_prec1(logits, labels, np.ones(64)), rel=1e-6)
  assert got == pytest.approx(true_acc * on + (1 - true_acc) * off, rel=1e-5)
  assert got < 0.5


# ----------------------------------------------------------------------------
# Label mapping.


def test_map_logits_and_loading(tmp_path):
  logits = jnp.array([[0.0, 5.0, 1.0, 3.0]])
  mapped = classification.map_logits(logits, [3, 2, -1])
  np.testing.assert_array_equal(mapped, [[3.0, 1.0, -np.inf]])
  assert classification.load_label_mapping([3, 2, -1], 4).tolist() == [3, 2, -1]
  (tmp_path / "m.json").write_text(json.dumps([1, 0]))
  (tmp_path / "m.txt").write_text("1\n0\n")
  for name in ("m.json", "m.txt"):
    assert classification.load_label_mapping(str(tmp_path / name), 4).tolist() == [1, 0]
  assert classification.load_label_mapping(None) is None
  for bad, match in [([4], "outside"), ([], "non-empty"), (["a"], "list of ints"),
                     (str(tmp_path / "nope.json"), "does not exist")]:
    with pytest.raises(ValueError, match=match):
      classification.load_label_mapping(bad, 4)


def _tiny_model():
  return FlexiViT(num_classes=6, width=16, depth=1, num_heads=2, mlp_dim=32,
                  patch_size=(4, 4), posemb_size=(2, 2), head_zeroinit=False)


def test_evaluator_sums_with_label_mapping():
  model = _tiny_model()
  images = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  params = jax.jit(functools.partial(model.init, seqhw=2))(jax.random.key(0), images)["params"]
  logits, _ = jax.jit(functools.partial(model.apply, seqhw=2))({"params": params}, images)
  mapping = np.array([4, 1, 5, -1], np.int32)  # 4 dataset classes, the last not modelled
  want_top = np.asarray(logits)[:, mapping[:3]].argmax(1)
  labels = np.eye(4, dtype=np.float32)[want_top]
  labels[:2] = np.eye(4, dtype=np.float32)[3]  # labelled with the class the model lacks: misses
  predict = jax.jit(compiled_steps.make_predict_step(model), static_argnames="flexi")
  data_cfg = dict(data={}, pp="x", batch_size=8)
  built = {name: evaluators.build(name, {**data_cfg, **cfg}, predict, num_classes=6)
           for name, cfg in {"a": {"label_mapping": mapping.tolist()}, "b": {}}.items()}
  sums = built["a"].batch_sums(predict(params, images, flexi=(("seqhw", 2),)), labels,
                               np.ones(8, bool))
  assert (float(sums["top1"]), float(sums["count"])) == (6, 8)
  assert built["a"].label_mapping.tolist() == mapping.tolist()
  assert built["b"].label_mapping is None


def test_config_checks_label_mapping_and_new_keys():
  base = dict(total_steps=1, input=dict(pp="decode"), model=dict(num_classes=10, variant="Ti"))
  ok = config_lib.complete({**base, "evals": {"i1k": dict(data={}, pp="x", label_mapping=[9, 0])},
                            "model_load": dict(kernel="pi_resize")})
  assert ok.distill.combine_teachers == "sum"
  for extra, match in [({"evals": {"e": dict(data={}, pp="x", label_mapping=[10])}}, "outside"),
                       ({"model_load": dict(kernel="resize")}, "kernel"),
                       ({"model_load": dict(bogus=1)}, "model_load.bogus"),
                       ({"distill": dict(combine_teachers="max")}, "combine_teachers")]:
    with pytest.raises(ValueError, match=match):
      config_lib.complete({**base, **extra})


# ----------------------------------------------------------------------------
# Several teachers.


def test_several_teachers_sum_by_default():
  config = config_lib.default_config()
  config.distill.teachers = {"a": {}, "b": {}}
  rng = np.random.default_rng(0)
  student, ta, tb = (jnp.asarray(rng.normal(size=(4, 5)), jnp.float32) for _ in range(3))
  kl_a, kl_b = losses.distill_kl(student, ta), losses.distill_kl(student, tb)
  got = compiled_steps.make_loss_fn(config)(student, {}, {"a": ta, "b": tb})
  assert float(got) == pytest.approx(float(kl_a + kl_b), rel=1e-6)
  config.distill.combine_teachers = "mean"
  got = compiled_steps.make_loss_fn(config)(student, {}, {"a": ta, "b": tb})
  assert float(got) == pytest.approx(float(kl_a + kl_b) / 2, rel=1e-6)


# ----------------------------------------------------------------------------
# Loading a 32x32 checkpoint into a 16x16 model.


@functools.lru_cache(maxsize=None)
def _apply(patch):
  model = reference_model(patch_size=patch)
  return jax.jit(model.apply, static_argnames="seqhw")


def _load(ref_params, kernel):
  init = jax.tree.map(np.zeros_like, dict(ref_params))
  init["embedding"] = {**init["embedding"], "kernel": np.zeros((16, 16, 3, 48), np.float32)}
  params, report = adapt.load_pretrained(init, ref_params, kernel=kernel, log=lambda _: None)
  return params, report


def test_kernel_loading_modes(ref_params, ref_outputs):
  kept, report = _load(ref_params, "keep")
  assert kept["embedding"]["kernel"].shape == (32, 32, 3, 48)
  assert any("kept the checkpoint's 32x32" in line for line in report)
  resized, report = _load(ref_params, "pi_resize")
  assert resized["embedding"]["kernel"].shape == (16, 16, 3, 48)
  assert any("PI-resized embedding/kernel from 32x32" in line for line in report)
  np.testing.assert_allclose(resized["embedding"]["kernel"], ref_outputs["pi_resize:16"],
                             rtol=0, atol=1e-5)
  images = ref_outputs["images"]
  run = lambda params, s: np.asarray(_apply((16, 16))({"params": params}, images, seqhw=s)[0])
  # 240 / 15 = 16 px: the resized kernel is used as is and gives the reference's logits.
  np.testing.assert_allclose(run(resized, 15), ref_outputs["logits:seqhw=15"], rtol=0, atol=1e-4)
  # The default keeps the 32x32 kernel: reference logits at every size (one shown here,
  # all in test_checkpoint); the chained resize 32->16->8 of pi_resize differs there.
  want = ref_outputs["logits:seqhw=30"]
  np.testing.assert_allclose(run(kept, 30), want, rtol=0, atol=1e-4)
  assert np.abs(run(resized, 30) - want).max() > 1e-3
  with pytest.raises(ValueError, match="kernel='bogus'"):
    _load(ref_params, "bogus")


def test_evaluate_with_label_mapping_on_digits(digits_data_dir):
  """evaluate() applies an evaluator's label_mapping (here: classes read in reverse)."""
  user = user_config()
  pp3 = user["input"]["pp"]
  user["evals"] = {
      "plain": dict(data=dict(name="sklearn_digits", split="test[:64]"), pp=pp3, batch_size=32),
      "mapped": dict(data=dict(name="sklearn_digits", split="test[:64]"), pp=pp3,
                     batch_size=32, label_mapping=list(range(9, -1, -1))),
  }
  config = config_lib.complete(user)
  model = vit.from_config(config.model)
  mesh = sharding.make_mesh(config.mesh)
  images = jnp.zeros((1, 16, 16, 3))
  params = jax.jit(functools.partial(model.init, seqhw=2))(jax.random.key(0), images)["params"]
  params["head"]["kernel"] = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape)
  flexis = [(("seqhw", 2),)]
  got = evals.evaluate(evals.build_evaluators(config, model, mesh), params, flexis)
  # Reference numbers from the logits, computed directly.
  batch = next(iter(data.eval_iterator(
      dict(name="sklearn_digits", split="test[:64]", data_dir=digits_data_dir), pp3, 64)))
  logits = np.asarray(model.apply({"params": params}, batch["image"], seqhw=2)[0])
  ids = batch["labels"].argmax(1)
  plain = (logits.argmax(1) == ids).mean()
  mapped = (logits[:, ::-1].argmax(1) == ids).mean()
  assert got["eval/plain/seqhw=2/prec@1"] == pytest.approx(plain)
  assert got["eval/mapped/seqhw=2/prec@1"] == pytest.approx(mapped)
  assert plain != mapped
  # A map that does not fit the labels the pp makes is refused before any step runs.
  user["evals"]["mapped"]["label_mapping"] = [2, 1, 0]
  short = evals.build_evaluators(config_lib.complete(user), model, mesh)
  with pytest.raises(ValueError, match="label_mapping has 3 entries but its pp makes labels "
                                       "with 10 classes"):
    evals.evaluate(short, params, flexis)


def test_label_maps_stay_out_of_the_cached_prediction_step(tmp_path):
  """The map is applied by the evaluator, not baked into the traced step: editing the
  mapping file between two cached runs gives the new map's counts from the same step."""
  from flexivit_jax.training import step_cache
  model = _tiny_model()
  images = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
  params = jax.jit(functools.partial(model.init, seqhw=2))(jax.random.key(0), images)["params"]
  logits, _ = jax.jit(functools.partial(model.apply, seqhw=2))({"params": params}, images)
  repl = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), P())
  params, images = jax.device_put((params, images), repl)
  mapping_file = tmp_path / "map.txt"

  def run(mapping):
    mapping_file.write_text("\n".join(map(str, mapping)))
    cache = step_cache.StepCache(str(tmp_path / "steps"), "fingerprint")
    predict = compiled_steps.CompiledSteps(compiled_steps.make_predict_step(model), repl,
                                           donate=False, cache=cache, name="eval")
    cfg = dict(data={}, pp="x", batch_size=8, label_mapping=str(mapping_file))
    evaluator = evaluators.build("evals.a", cfg, lambda p, x, f: predict(f, p, x), num_classes=6)
    # Labels are the first map's top class: every example right under it.
    top = np.asarray(logits)[:, [4, 1, 5]].argmax(1)
    sums = evaluator.batch_sums(evaluator.predict_fn(params, images, (("seqhw", 2),)),
                                np.eye(3, dtype=np.float32)[top], np.ones(8, bool))
    return float(sums["top1"]), float(sums["count"]), (cache.hits, cache.misses)

  assert run([4, 1, 5]) == (8, 8, (0, 1))
  assert run([4, 1, 5]) == (8, 8, (1, 0))  # Same file: the traced step is read back.
  reversed_correct = int((np.asarray(logits)[:, [5, 1, 4]].argmax(1)
                          == np.asarray(logits)[:, [4, 1, 5]].argmax(1)).sum())
  assert run([5, 1, 4]) == (reversed_correct, 8, (1, 0))  # Edited: the new map's counts.
  assert reversed_correct < 8
