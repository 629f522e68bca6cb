"""Input pipeline: big_vision-style pp ops and deterministic tfds pipelines.

Importing this package registers the bundled `sklearn_digits` tfds builder.
See docs/data.md.
"""
from flexivit_jax.data import digits
from flexivit_jax.data import ops
from flexivit_jax.data.digits import ensure_built
from flexivit_jax.data.preprocess import get_pp_fn
from flexivit_jax.data.pipeline import MASK_KEY
from flexivit_jax.data.pipeline import BatchIterator
from flexivit_jax.data.pipeline import EvalData
from flexivit_jax.data.pipeline import dataset_info
from flexivit_jax.data.pipeline import eval_data
from flexivit_jax.data.pipeline import eval_iterator
from flexivit_jax.data.pipeline import num_eval_batches
from flexivit_jax.data.pipeline import train_iterator
from flexivit_jax.data.pipeline import train_positions

__all__ = [
    "BatchIterator", "EvalData", "MASK_KEY", "dataset_info", "digits",
    "ensure_built", "eval_data", "eval_iterator", "get_pp_fn",
    "num_eval_batches", "ops", "train_iterator", "train_positions",
]
