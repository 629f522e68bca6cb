"""The paper's analyses: CKA, resize methods (incl. the 'norm' heuristic), zero-shot, CLIs."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexivit_jax.analysis import cka, resize_methods, subjects, zero_shot
from flexivit_jax.errors import UserError
from flexivit_jax.models.vit import FlexiViT

SMALL = dict(num_classes=10, width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=(4, 4),
             posemb_size=(2, 2), pool_type="tok")


def small_subject(size=16):
  model = FlexiViT(**SMALL)
  return model, model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]


def test_linear_cka_of_a_layer_with_itself_is_one_and_is_invariant():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 16))
  assert cka.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  assert cka.linear_cka(x, 3.0 * x @ q + 1.0) == pytest.approx(1.0, abs=1e-9)
  assert cka.linear_cka(x, rng.normal(size=(200, 16))) < 0.3


def test_area_average_to_a_common_grid():
  tokens = np.arange(2 * 4 * 4 * 1, dtype=float).reshape(2, 4, 4, 1)
  out = cka.area_average(tokens, 2)
  assert out.shape == (2, 2, 2, 1)
  assert out[0, 0, 0, 0] == np.mean([0, 1, 4, 5])
  with pytest.raises(UserError, match="area-average"):
    cka.area_average(tokens, 3)


def test_cka_between_a_grid_and_itself_is_one_on_the_diagonal_and_heatmap_rows_are_blocks(
    tmp_path):
  model, params = small_subject()
  images = jax.random.normal(jax.random.key(1), (24, 16, 16, 3))
  same = cka.cka_between_grids(model, params, images, 4, 4)
  np.testing.assert_allclose(np.diag(same["patch_tokens"]), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.diag(same["pooled_token"]), 1.0, atol=1e-6)
  across = cka.cka_between_grids(model, params, images, 4, 2)
  assert across["common_grid"] == 2
  assert np.shape(across["patch_tokens"]) == (3, 3)
  assert [r["block"] for r in across["per_layer"]] == [0, 1, 2]
  assert cka.plot_cka(across, str(tmp_path / "cka.png")) == (3, 3)
  assert os.path.getsize(tmp_path / "cka.png") > 0


def test_arccos_distance_is_zero_on_the_diagonal_and_tsne_keeps_points():
  model, params = small_subject()
  images = jax.random.normal(jax.random.key(1), (20, 16, 16, 3))
  dist, reps = cka.arccos_distances(model, params, images, [2, 4])
  assert np.allclose(np.diag(dist), 0.0, atol=1e-3) and dist[0][1] > 0
  assert cka.tsne(reps).shape == (2, 20, 2)


def test_norm_method_rescales_every_token_to_the_given_norm():
  model, params = small_subject()
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  normed = model.clone(resize_method="norm", token_norm=3.0)
  _, out = normed.apply({"params": params}, images, seqhw=4)
  np.testing.assert_allclose(jnp.linalg.norm(out["stem"], axis=-1), 3.0, rtol=1e-5)
  _, vanilla = model.clone(resize_method="vanilla").apply({"params": params}, images, seqhw=4)
  cos = jnp.sum(out["stem"] * vanilla["stem"], -1) / (
      jnp.linalg.norm(out["stem"], axis=-1) * jnp.linalg.norm(vanilla["stem"], axis=-1))
  np.testing.assert_allclose(cos, 1.0, atol=1e-5)  # Same direction as vanilla.
  with pytest.raises(UserError, match="token_norm"):
    model.clone(resize_method="norm").hparams()


def test_resize_methods_gives_method_factor_top1(digits_data_dir):
  model, params = small_subject()
  results = resize_methods.resize_methods(
      model, params, 16, data_cfg=subjects.DIGITS_TEST, pp_template=subjects.DIGITS_PP,
      factors=(1.0, 2.0))
  assert set(results) == set(resize_methods.METHODS)
  assert all(set(r) == {"1.0", "2.0"} for r in results.values())
  assert len({r["1.0"] for r in results.values()}) == 1  # No resize at the training size.
  with pytest.raises(UserError, match="integer image side"):
    resize_methods.resize_methods(model, params, 16, data_cfg=subjects.DIGITS_TEST,
                                  pp_template=subjects.DIGITS_PP, factors=(1.1,))


@pytest.mark.slow
def test_pi_resize_keeps_accuracy_when_upscaling_while_vanilla_drops(digits_data_dir, tmp_path):
  """The acceptance setup of docs/evaluate.md, shortened: 32 px, 8 px patches."""
  model, params = subjects.train_subject(str(tmp_path), image_size=32, train_seqhws=[4],
                                         posemb=4, steps=800)
  results = resize_methods.resize_methods(
      model, params, 32, data_cfg=subjects.DIGITS_TEST, pp_template=subjects.DIGITS_PP,
      factors=(1.0, 1.5, 2.0), methods=("vanilla", "pi"))
  base = results["pi"]["1.0"]
  assert base > 0.8
  for f in ("1.5", "2.0"):
    assert abs(results["pi"][f] - base) <= 0.005, results
    assert results["vanilla"][f] < base, results
  assert results["vanilla"]["2.0"] < base - 0.05, results


@pytest.mark.slow
@pytest.mark.parametrize("name,files", [
    ("resize_methods", ["resize_methods.png"]),
    ("zero_shot", ["zero_shot.png"]),
    ("cka", ["cka.png", "tsne.png"]),
])
def test_analysis_cli_trains_its_subject_and_writes_table_plot_results(
    name, files, digits_data_dir, tmp_path, capsys):
  module = {"resize_methods": resize_methods, "zero_shot": zero_shot, "cka": cka}[name]
  extra = ["--factors", "1,2"] if name == "resize_methods" else []
  module.main(["--runlocal", "--out", str(tmp_path), *extra])
  printed = capsys.readouterr().out
  assert "----" in printed and "results.json" in printed
  # stdout is not a terminal here: progress lines, from the subject's training on.
  assert re.search(r"^start  .*  8 steps of batch 16  from step 0$", printed, re.M), printed
  assert re.search(r"^step 8/8  ", printed, re.M)
  want = {"resize_methods": r"^factor 2/2  scale 2  image 32px  vanilla \d+\.\d\d%",
          "zero_shot": r"^flexivit  seqhw 4 \(patch 4\)  top1 ", "cka": r"^CKA between seqhw"}
  assert re.search(want[name], printed, re.M), printed
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  for png in files:
    assert os.path.getsize(tmp_path / png) > 0
  if name == "resize_methods":
    assert set(results) == set(resize_methods.METHODS)
  elif name == "zero_shot":
    assert set(results["vit"]) == set(results["flexivit"]) == {"2", "4"}
  else:
    assert len(results["patch_tokens"]) == 1  # The runlocal model has one block.


def test_analysis_cli_user_error_is_one_line_exit_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    cka.main(["--out", str(tmp_path), "--grids", "4", "--checkpoint", "x"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
