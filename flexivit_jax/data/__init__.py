"""Input pipeline: big_vision-style pp ops and deterministic tfds pipelines.

  order      which examples each step reads: a pure function of (seed, step), no TensorFlow
  sources    which examples a data config names: tfds, image folders, class subsets
  pipeline   the tf.data pipelines: readers, preprocessing, batching, train/eval iterators
  streaming  tf.data streaming, for datasets without random access
  preprocess pp strings: the op registry, the parser, the composed function
  ops, ops_image, ops_general, randaug  the pp ops (big_vision's vocabulary)
  ops_dense  pp ops transforming an image and its per-pixel mask together (segmentation)
  digits, cluttered_digits  the bundled offline datasets `sklearn_digits`, `cluttered_digits`

The names below are imported on first use, so that `flexivit_jax.data.order`
can be imported without TensorFlow. See docs/data.md.
"""
import importlib

_HOME = {
    "BatchIterator": "pipeline", "EvalData": "pipeline", "MASK_KEY": "pipeline",
    "eval_data": "pipeline", "eval_iterator": "pipeline", "train_iterator": "pipeline",
    "dataset_info": "sources", "num_eval_batches": "sources",
    "train_positions": "order", "ensure_built": "sources", "get_pp_fn": "preprocess",
}
_MODULES = ("cluttered_digits", "digits", "ops", "ops_dense", "ops_general", "ops_image", "order",
            "pipeline", "preprocess", "randaug", "sources", "streaming")

__all__ = sorted([*_HOME, "cluttered_digits", "digits", "ops", "ops_dense", "ops_general",
                  "ops_image"])


def __getattr__(name):
  if name in _MODULES:
    return importlib.import_module(f"{__name__}.{name}")
  if name not in _HOME:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted({*globals(), *_HOME, *_MODULES})
