"""Segmenter: logits at the image's size at every grid and shape, FlexiViT params inside."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REF_MODEL, reference_model
from flexivit_jax.errors import UserError
from flexivit_jax.models import tasks
from flexivit_jax.models.segmenter import Segmenter
from flexivit_jax.models.vit import FlexiViT

TINY = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=(8, 8), posemb_size=(4, 4))


def tiny_segmenter(num_classes=5, **fields):
  return tasks.from_config({**TINY, **fields, "num_classes": num_classes}, "segmentation")


@pytest.fixture(scope="module")
def seg_params():
  model = tiny_segmenter(head_zeroinit=False)
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]


@pytest.mark.parametrize("seqhw", [1, 2, 3, 4, 5, 8, 16, 32])
def test_logits_have_the_image_size_at_every_seqhw(seg_params, seqhw):
  model, params = seg_params
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  logits, out = model.apply({"params": params}, images, seqhw=seqhw)
  assert logits.shape == (2, 32, 32, 5)
  assert out["logits_grid"].shape == (2, seqhw, seqhw, 5)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("hw,call", [((24, 40), dict(seqhw=(3, 5))), ((24, 40), dict(seqhw=4)),
                                     ((30, 17), dict(patch_size=(6, 4))),
                                     ((64, 48), dict(patch_size=8))])
def test_logits_have_the_size_of_rectangular_images(seg_params, hw, call):
  model, params = seg_params
  logits, out = model.apply({"params": params}, jnp.ones((1, *hw, 3)), **call)
  assert logits.shape == (1, *hw, 5)
  grid = out["logits_grid"].shape[1:3]
  assert grid[0] >= 1 and grid[1] >= 1


def test_upsampling_is_bilinear_and_a_constant_grid_stays_constant(seg_params):
  """The pixel logits are the patch logits resized bilinearly (jax.image.resize)."""
  model, params = seg_params
  images = jax.random.normal(jax.random.key(2), (1, 32, 32, 3))
  logits, out = model.apply({"params": params}, images, seqhw=4)
  expected = jax.image.resize(out["logits_grid"], (1, 32, 32, 5), "bilinear")
  np.testing.assert_allclose(logits, expected, atol=1e-6)
  # Each 8x8 patch's centre pixels sit between grid centres: equal to the patch's
  # logits only where the neighbours agree, so check a corner, clamped at the edge.
  np.testing.assert_allclose(logits[0, 0, 0], out["logits_grid"][0, 0, 0], atol=1e-5)


def test_backbone_is_flexivit_with_its_param_names(ref_params):
  """The reference FlexiViT's params, head dropped, are exactly the backbone's."""
  fields = {k: v for k, v in REF_MODEL.items() if k != "num_classes"}
  seg = tasks.from_config({**fields, "num_classes": 3}, "segmentation")
  params = seg.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), seqhw=4)["params"]
  assert set(params) == {"backbone", "decoder"}
  backbone = {k: v for k, v in ref_params.items() if k != "head"}
  assert (jax.tree.map(np.shape, params["backbone"]) == jax.tree.map(np.shape, backbone))
  images = jax.random.normal(jax.random.key(3), (2, 64, 64, 3))
  _, ref_out = reference_model().apply({"params": ref_params}, images, seqhw=4)
  loaded = {"backbone": backbone, "decoder": params["decoder"]}
  _, out = seg.apply({"params": loaded}, images, seqhw=4)
  np.testing.assert_allclose(out["pre_logits_2d"], ref_out["pre_logits_2d"], atol=1e-5)


def test_tasks_registry_builds_and_validates():
  assert isinstance(tasks.from_config(dict(num_classes=3, **TINY)), FlexiViT)
  seg = tiny_segmenter(7)
  assert isinstance(seg, Segmenter) and seg.num_classes == 7 and seg.backbone.num_classes is None
  with pytest.raises(UserError, match="task='segmentaton'.*did you mean 'segmentation'"):
    tasks.from_config(dict(TINY), "segmentaton")
  with pytest.raises(UserError, match="model.num_classes.*pixel classes"):
    tasks.from_config(dict(TINY), "segmentation")
  with pytest.raises(UserError, match="model.widht"):
    tasks.from_config(dict(TINY, widht=3, num_classes=2), "segmentation")
  with pytest.raises(UserError, match="no head"):
    Segmenter(num_classes=2, backbone=FlexiViT(num_classes=4, **TINY)).hparams()
