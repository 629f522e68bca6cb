"""Semantic segmentation on the unchanged FlexiViT backbone: Segmenter's linear decoder.

`Segmenter(num_classes, backbone=FlexiViT(...))` runs the backbone exactly as
classification does (the patch size is chosen per call: `seqhw` or
`patch_size`), maps every patch token to class logits with one dense layer (the
linear baseline of Strudel et al., 2021), and upsamples the logit grid
bilinearly to the image's height and width, so every pixel gets logits whatever
the patch size, square or not.

The backbone's params live under `backbone/` with FlexiViT's own names, so a
FlexiViT checkpoint (npz or workdir) fills them as is, its classification head
dropped; the decoder's are under `decoder/`.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from flexivit_jax.errors import UserError
from flexivit_jax.models.vit import HW, FlexiViT

Array = jax.Array
BACKBONE = "backbone"  # The sub-module (and params key) holding the FlexiViT.
DECODER = "decoder"


class Segmenter(nn.Module):
  """FlexiViT backbone + linear decoder; returns `(logits (N, H, W, num_classes), out)`.

  `out` holds the backbone's intermediates and `logits_grid`, the decoder's
  logits per patch (N, h, w, num_classes) before upsampling. The backbone must
  have no head of its own (`num_classes=None`): the decoder replaces it.
  """
  num_classes: int
  backbone: FlexiViT

  def hparams(self) -> dict:
    """The backbone's architecture (validated), as FlexiViT.hparams."""
    if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
        or self.num_classes < 1:
      raise UserError(f"Segmenter num_classes must be a positive int, got {self.num_classes!r}")
    if self.backbone.num_classes:
      raise UserError(f"the Segmenter's backbone must have no head (num_classes=None), "
                      f"got num_classes={self.backbone.num_classes}; the decoder replaces it")
    return self.backbone.hparams()

  @nn.compact
  def __call__(self, images: Array, *, seqhw: Optional[HW] = None,
               patch_size: Optional[HW] = None, train: bool = False
               ) -> Tuple[Array, dict[str, Any]]:
    self.hparams()
    _, out = self.backbone(images, seqhw=seqhw, patch_size=patch_size, train=train)
    kw = {"kernel_init": nn.initializers.zeros} if self.backbone.head_zeroinit else {}
    grid = out["logits_grid"] = nn.Dense(self.num_classes, name=DECODER, **kw)(
        out["pre_logits_2d"])
    n, h, w = images.shape[:3]
    logits = jax.image.resize(grid, (n, h, w, self.num_classes), method="bilinear")
    return logits.astype(jnp.float32), out
