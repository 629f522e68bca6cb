"""Streaming reads: each process reads its own part of the split."""
import numpy as np
import tensorflow_datasets as tfds

from flexivit_jax import data

PP = 'decode|resize(8)|keep("image","label","image/filename")'


def test_streaming_eval_splits_the_folder_between_processes(image_folder):
  c = {"folder": image_folder, "split": "test", "streaming": True}
  names = []
  for p in (0, 1):
    batches = list(data.eval_iterator(c, PP, 4, process_index=p, process_count=2))
    assert len(batches) == data.num_eval_batches(c, 4) == 2
    names += [n for b in batches for n in b["image/filename"][b["_mask"]]]
  assert len(names) == len(set(names)) == 6


def test_streaming_restart_reshuffles_reproducibly():
  """A restart at step k cannot resume the stream: it starts one seeded by (seed, k)."""
  with tfds.testing.mock_data(num_examples=12):
    c = {"name": "imagenet2012", "split": "train", "streaming": True}
    pp = 'decode|resize(4)|keep("image","label")'

    def first(start_step):
      with data.train_iterator(c, pp, 4, seed=0, start_step=start_step, process_index=0,
                               process_count=1, shuffle_buffer=12) as it:
        return next(it)["image"]

    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(first(0), first(3))
