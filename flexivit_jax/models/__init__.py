"""The FlexiViT module and the resizes that make one set of weights fit every patch size."""
