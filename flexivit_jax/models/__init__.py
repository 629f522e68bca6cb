"""The FlexiViT module and the resizes that make one set of weights fit every patch size.

  vit      FlexiViT (the patch size is chosen at call time), its variants and config fields
  layers   the transformer's layers, named as big_vision's ViT so its npz loads as is
  resize   PI-resize of the patch kernel, bilinear resampling of the position embedding

Imports nothing of the package but `errors` and `tree` (tests/test_layers.py holds it so).
"""
