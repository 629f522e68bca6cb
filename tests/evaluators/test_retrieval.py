"""Retrieval recall on constructed galleries is exact, at one size and across sizes."""
import numpy as np
import pytest

from flexivit_jax import evaluators
from flexivit_jax.errors import UserError
from flexivit_jax.evaluators import retrieval

PP = "decode|value_range(-1, 1)|keep('image', 'label')"


def unit(deg):
  return np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], 1)


def test_recall_on_a_constructed_gallery():
  # Gallery at angles 0, 10, 20, ... with classes; cosine order is the angular distance.
  gallery = unit(np.arange(0, 90, 10)) * np.arange(1, 10)[:, None]  # Norms do not matter.
  gallery_y = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
  queries = unit(np.array([1, 39, 61, 89]))
  query_y = np.array([0, 2, 0, 0])
  # q0 nearest 0 (class 0) hit; q1 nearest 40 (2): hit; q2 nearest 60 (0): hit;
  # q3 nearest 90? none -> 80 (2), then 70 (1), 60 (0): hit only at k=3.
  got = retrieval.recall_at_k(queries, query_y, gallery, gallery_y, ks=(1, 2, 3))
  assert got == {1: 0.75, 2: 0.75, 3: 1.0}


def test_leave_one_out_never_retrieves_the_query_itself():
  x = unit(np.array([0, 5, 50, 55, 100]))
  y = np.array([0, 1, 1, 1, 0])
  got = retrieval.recall_at_k(x, y, x, y, ks=(1, 2), leave_one_out=True)
  # 0->5 (miss), 5->0 (miss), 50->55 hit, 55->50 hit, 100->55 miss; at k=2 0->{5,50} miss,
  # 5->{0,50} hit, 100->{55,50} miss.
  assert got == {1: 0.4, 2: 0.6}


def rotate(flexi_scale):
  """Fixed features that depend on the size: the pixels, times a per-size factor."""
  def predict(params, images, flexi):
    feats = images.reshape(images.shape[0], -1)
    return feats * flexi_scale[dict(flexi)["seqhw"]]
  return predict


def test_matrix_across_sizes_on_digits(digits_data_dir):
  data = dict(name="sklearn_digits", split="test", data_dir=digits_data_dir)
  gallery = dict(data, split="train")
  predict = rotate({1: 1.0, 2: 3.0, 3: -1.0})  # seqhw 2 embeds as 1 (cosine); 3 opposite.
  ev = evaluators.build("evals.r", dict(type="retrieval", data=data, gallery_data=gallery,
                                        pp=PP, batch_size=64), predict)
  flexis = [(("seqhw", s),) for s in (1, 2, 3)]
  results = ev.run(None, flexis)
  matrix = retrieval.recall_matrix(results, flexis, k=1)
  assert matrix.shape == (3, 3)
  np.testing.assert_allclose(np.diag(matrix), matrix[0, 0])  # Every size alone: the same.
  assert matrix[0, 1] == matrix[1, 0] == matrix[0, 0]  # Scaling changes no cosine.
  assert matrix[0, 2] < matrix[0, 0] - 0.3  # The opposite embedding retrieves badly.
  assert results[flexis[0]]["recall@5"] >= results[flexis[0]]["recall@1"] > 0.5
  from flexivit_jax.evaluators.features import split_features
  q, qy = split_features(predict, None, flexis[:1], data=data, pp=PP, batch_size=3)
  g, gy = split_features(predict, None, flexis[:1], data=gallery, pp=PP, batch_size=3)
  want = retrieval.recall_at_k(q[flexis[0]], qy, g[flexis[0]], gy)
  assert results[flexis[0]]["recall@1"] == want[1] and results[flexis[0]]["recall@5"] == want[5]


@pytest.mark.parametrize("cfg,message", [
    ({"pp": "x"}, "needs 'data'"),
    ({"data": {"name": "a", "split": "b"}, "pp": "x", "ks": [0]}, "ks must be"),
])
def test_config_errors(cfg, message):
  with pytest.raises(UserError, match=message):
    evaluators.check_config("evals.r", {"type": "retrieval", **cfg})
