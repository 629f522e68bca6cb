"""The few-shot evaluator equals a direct numpy closed-form ridge on fixed features."""
import numpy as np
import pytest

from flexivit_jax import evaluators
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import features as features_lib
from flexivit_jax.evaluators import fewshot

PP = "decode|value_range(-1, 1)|keep('image', 'label')"


def direct_probe(train_x, train_y, test_x, test_y, l2, num_classes):
  """The ridge solution written the plain way: w = (xᵀx + l2 I)⁻¹ xᵀ t."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5
  prep = lambda x: np.concatenate([(x - mean) / std, np.full((len(x), 1), 100.0)], 1)
  x = prep(train_x.astype(np.float64))
  t = 2 * np.eye(num_classes)[train_y] - 1
  w = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ t)
  return np.mean((prep(test_x.astype(np.float64)) @ w).argmax(1) == test_y)


def direct_few_shot(train_x, train_y, test_x, test_y, shots, l2, seeds=3):
  classes = int(max(train_y.max(), test_y.max())) + 1
  accs = []
  for seed in range(seeds):
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.permutation(np.flatnonzero(train_y == c))[:shots]
                          for c in range(classes)])
    accs.append(direct_probe(train_x[idx], train_y[idx], test_x, test_y, l2, classes))
  return np.mean(accs)


def clusters(n_per_class, dim, classes=4, seed=0, spread=2.0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, dim)) * spread
  y = np.repeat(np.arange(classes), n_per_class)
  return (centres[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


@pytest.mark.parametrize("dim", [3, 40])  # N >= D and N < D for most shots.
@pytest.mark.parametrize("shots", [1, 2, 5, 10])
@pytest.mark.parametrize("l2", [0.1, 2.0 ** 10])
def test_equals_direct_closed_form(dim, shots, l2):
  train_x, train_y = clusters(12, dim, seed=1)
  test_x, test_y = clusters(9, dim, seed=2, spread=0.0)
  test_x += clusters(9, dim, seed=1)[0][:len(test_x)] * 0.3
  ours = fewshot.few_shot_accuracy(train_x, train_y, test_x, test_y, shots=shots, l2_reg=l2)
  assert ours == pytest.approx(direct_few_shot(train_x, train_y, test_x, test_y, shots, l2),
                               abs=1e-12)


@pytest.mark.parametrize("n,d", [(30, 5), (5, 30)])
def test_ridge_weights_both_branches_solve_the_normal_equations(n, d):
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
  w = fewshot.ridge_weights(x, t, 0.5)
  np.testing.assert_allclose(w, np.linalg.solve(x.T @ x + 0.5 * np.eye(d), x.T @ t), atol=1e-10)


def test_few_shot_indices_are_first_shots_of_a_per_seed_permutation():
  y = np.array([0, 1, 0, 1, 0, 1, 2, 2])
  idx = fewshot.few_shot_indices(y, 2, seed=5)
  assert sorted(np.bincount(y[idx]).tolist()) == [2, 2, 2]
  np.testing.assert_array_equal(idx, fewshot.few_shot_indices(y, 2, seed=5))
  picks = {tuple(fewshot.few_shot_indices(y, 1, seed=s)) for s in range(10)}
  assert len(picks) > 1


def test_separable_features_score_perfectly_and_noise_near_chance():
  x, y = clusters(20, 8, spread=50.0)
  assert fewshot.few_shot_accuracy(x, y, x, y, shots=5, l2_reg=1.0) == 1.0
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(400, 8))
  labels = rng.integers(0, 4, 400)
  assert fewshot.few_shot_accuracy(noise, labels, noise[:200], labels[:200], shots=5,
                                   l2_reg=1.0) < 0.45


def pixels(params, images, flexi):
  """Fixed features: the flattened pixels, scaled by the flexi value (a different
  representation per size)."""
  return images.reshape(images.shape[0], -1) * dict(flexi)["seqhw"]


def test_padded_examples_are_masked_out_and_the_evaluator_equals_direct(digits_data_dir):
  train = dict(name="sklearn_digits", split="train", data_dir=digits_data_dir)
  test = dict(train, split="test")
  # 1497 and 300 examples: batches of 64 pad both splits; batches of 3 pad neither.
  padded_x, padded_y = features_lib.split_features(pixels, None, [(("seqhw", 1),)],
                                                   data=test, pp=PP, batch_size=64)
  exact_x, exact_y = features_lib.split_features(pixels, None, [(("seqhw", 1),)],
                                                 data=test, pp=PP, batch_size=3)
  assert len(padded_y) == 300
  np.testing.assert_array_equal(padded_y, exact_y)
  np.testing.assert_array_equal(padded_x[(("seqhw", 1),)], exact_x[(("seqhw", 1),)])
  ev = evaluators.build("evals.fs", dict(type="fewshot", datasets={"digits": (
      "sklearn_digits", "train", "test")}, shots=[1, 25], l2_reg=2.0 ** 10, pp_train=PP,
      pp_eval=PP, batch_size=64, data_dir=digits_data_dir), pixels)
  flexis = [(("seqhw", 1),), (("seqhw", 2),)]
  results = ev.run(None, flexis)
  tr_x, tr_y = features_lib.split_features(pixels, None, flexis, data=train, pp=PP, batch_size=3)
  te_x, te_y = features_lib.split_features(pixels, None, flexis, data=test, pp=PP, batch_size=3)
  for f in flexis:  # 10 and 250 training examples: 193 features, so N < D and N >= D.
    for shots in (1, 25):
      want = direct_few_shot(tr_x[f], tr_y, te_x[f], te_y, shots, 2.0 ** 10)
      assert results[f][f"digits_{shots}shot"] == pytest.approx(want, abs=1e-12)
  assert results[flexis[0]]["digits_25shot"] > 0.8  # Pixels of digits are a fine feature.
  assert ev.log_values(results)[(flexis[0], "digits_1shot")] == results[flexis[0]]["digits_1shot"]


@pytest.mark.parametrize("cfg,message", [
    ({}, "must name at least one dataset"),
    ({"datasets": {"d": ("x", "train")}}, r"datasets.d must be \(tfds name"),
    ({"datasets": {"d": ("x", "a", "b")}}, "needs 'pp_train'"),
    ({"datasets": {"d": ("x", "a", "b")}, "pp_train": "d", "pp_eval": "d", "shots": [0]},
     "shots must be a non-empty list of positive ints"),
    ({"datasets": {"d": ("x", "a", "b")}, "pp_train": "d", "pp_eval": "d", "num_seeds": 0},
     r"evals.fs.num_seeds must be a positive int, got 0"),
    ({"datasets": {"d": ("x", "a", "b")}, "pp_train": "d", "pp_eval": "d", "batch_size": True},
     r"evals.fs.batch_size must be a positive int, got True"),
    ({"datasets": {"d": ("x", "a", "b")}, "pp_train": "d", "pp_eval": "d", "l2_reg": -1},
     "l2_reg must be a number >= 0"),
    ({"datasets": {"d": ("x", "a", "b")}, "pp_train": "d", "pp_eval": "d", "shot": [1]},
     "unknown config key 'evals.fs.shot'"),
])
def test_config_errors(cfg, message):
  with pytest.raises(UserError, match=message):
    evaluators.check_config("evals.fs", {"type": "fewshot", **cfg})


def test_alias_and_output_name():
  cfg = {"type": "fewshot_lsr", "datasets": {"d": ("x", "a", "b")}, "pp_train": "d",
         "pp_eval": "d"}
  evaluators.check_config("evals.fs", cfg)
  assert evaluators.output_name("evals.fs", cfg) == "pre_logits"
  assert evaluators.output_name("evals.fs", {**cfg, "representation_layer": "encoded"}) == "encoded"
  assert evaluators.output_name("evals.val", {"data": {}, "pp": "x"}) == "logits"
