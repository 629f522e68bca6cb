"""flexivit_jax: FlexiViT in JAX/Flax, faithful to big_vision's numerics and npz checkpoints."""
from flexivit_jax.checkpoints import load_params, load_pretrained, save_params
from flexivit_jax.models.vit import FlexiViT, decode_variant, VARIANTS
from flexivit_jax.evaluators.predict import Predictor, choose_seqhw
from flexivit_jax.models.resize import pi_resize, resize_patch_embed, resample_posemb

__all__ = ["FlexiViT", "decode_variant", "VARIANTS", "pi_resize", "resize_patch_embed",
           "resample_posemb", "load_params", "load_pretrained", "save_params", "Predictor",
           "choose_seqhw"]
