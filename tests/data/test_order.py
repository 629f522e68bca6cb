"""The data-order contract: which (epoch, example) each process reads at each step."""
import subprocess
import sys

from flexivit_jax import data
from flexivit_jax.data import order

from conftest import REPO


def test_train_epochs_are_permutations_and_batches_straddle():
  n, gbs = 10, 4
  pos = [data.train_positions(5, n, k, gbs) for k in range(5)]
  flat = [p for batch in pos for p in batch]
  assert sorted(i for e, i in flat[:10]) == list(range(10))  # epoch 0
  assert [e for e, _ in pos[2]] == [0, 0, 1, 1]  # batch 2 straddles
  assert sorted(i for e, i in flat[10:20]) == list(range(10))  # epoch 1
  assert [i for _, i in flat[:10]] != [i for _, i in flat[10:20]]
  halves = [data.train_positions(5, n, 3, gbs, p, 2) for p in (0, 1)]
  assert halves[0] + halves[1] == pos[3]


def test_order_and_seeds_are_pinned():
  """Changing these values changes every run's data: resumed runs would see other batches."""
  assert order.train_positions(5, 10, 2, 4) == [(0, 5), (0, 8), (1, 6), (1, 7)]
  assert order.train_positions(7, 1497, 1000, 16, 1, 2) == [
      (10, 403), (10, 539), (10, 329), (10, 740), (10, 37), (10, 1239), (10, 1118), (10, 1198)]
  assert order.epoch_tag(0, 0) == 1123624086
  assert order.epoch_tag(3, 1) == order.epoch_tag(2**40 + 3, 1) == 209391242  # seed mod 2**32


def test_order_imports_no_tensorflow():
  code = ("import sys, flexivit_jax.data.order; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                       text=True).stdout
  assert out.strip() == "[]"
