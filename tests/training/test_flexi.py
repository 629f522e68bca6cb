"""Tests for flexivit_jax.training.flexi.FlexiSampler."""

import numpy as np
import pytest

from flexivit_jax.training.flexi import FlexiSampler

SEQHW = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)


def _cfg(**kw):
  cfg = dict(seqhw=dict(v=SEQHW, p="uniform"))
  cfg.update(kw)
  return cfg


def test_deterministic_per_seed_and_step():
  a, b = FlexiSampler(_cfg(), seed=3), FlexiSampler(_cfg(), seed=3)
  seq_a = [a(s)["seqhw"] for s in range(200)]
  assert seq_a == [b(s)["seqhw"] for s in range(200)]
  # Resuming mid-run (querying steps out of order) replays the same values.
  assert [a(s)["seqhw"] for s in range(199, 99, -1)] == seq_a[199:99:-1]
  assert all(isinstance(v, int) for v in seq_a)
  c = FlexiSampler(_cfg(), seed=4)
  assert [c(s)["seqhw"] for s in range(200)] != seq_a
  assert len(set(seq_a)) == len(SEQHW)
  # Tuple seeds, e.g. (experiment id, work-unit id).
  d, e = FlexiSampler(_cfg(), seed=(7, 1)), FlexiSampler(_cfg(), seed=[7, 2])
  assert d.seed == (7, 1)
  assert [d(s) for s in range(50)] == [FlexiSampler(_cfg(), seed=(7, 1))(s) for s in range(50)]
  assert [d(s) for s in range(50)] != [e(s) for s in range(50)]


def test_frequencies_follow_p():
  p = (0.1, 0.2, 0.7)
  sampler = FlexiSampler(dict(patch_size=dict(v=((8, 8), (16, 16), [32, 32]), p=(1, 2, 7))), seed=0)
  draws = [sampler(s)["patch_size"] for s in range(5000)]
  assert set(draws) == {(8, 8), (16, 16), (32, 32)}  # lists become hashable tuples
  freqs = [draws.count(v) / len(draws) for v in ((8, 8), (16, 16), (32, 32))]
  np.testing.assert_allclose(freqs, p, atol=0.025)
  np.testing.assert_allclose(sampler.probabilities("patch_size", step=0), p)


def test_multiple_args_and_all_values():
  sampler = FlexiSampler(_cfg(patch_size=dict(v=((8, 8), (16, 16)), p=(0.3, 0.7))), seed=1)
  out = sampler(7)
  assert set(out) == {"seqhw", "patch_size"} and sampler.names == ("seqhw", "patch_size")
  hash(tuple(out.items()))  # static-jit-argument friendly
  combos = sampler.all_values()
  assert len(combos) == len(SEQHW) * 2
  assert combos[0] == {"seqhw": 5, "patch_size": (8, 8)}
  assert {tuple(c.items()) for c in combos} >= {tuple(sampler(s).items()) for s in range(50)}
  # Each argument draws from its own stream: adding patch_size leaves seqhw unchanged.
  alone = FlexiSampler(_cfg(), seed=1)
  assert [alone(s)["seqhw"] for s in range(50)] == [sampler(s)["seqhw"] for s in range(50)]


def test_numpy_step_and_empty_config():
  sampler = FlexiSampler(_cfg(), seed=0)
  assert sampler(np.int64(11)) == sampler(11)
  assert FlexiSampler(None, seed=0)(5) == {}
  assert FlexiSampler({}, seed=0).all_values() == [{}]


@pytest.mark.parametrize(
  "spec, match",
  [
    (dict(v=(1, 2), p=(0.5,)), "seqhw.p"),
    (dict(v=(1, 2), p=(0.5, -0.1)), "seqhw.p"),
    (dict(v=(1, 2), p=(0, 0)), "seqhw.p"),
    (dict(v=(1, 2), p="gaussian"), "seqhw.p='gaussian'"),
    (dict(v=(), p="uniform"), "seqhw.v"),
    (dict(v=5), "seqhw.v=5"),
    (dict(v=(1, 2), q=1), "seqhw has unknown keys"),
  ],
)
def test_bad_config(spec, match):
  with pytest.raises(ValueError, match=match):
    FlexiSampler(dict(seqhw=spec), seed=0)


def test_bad_seed_and_step():
  for seed in (-1, (3, -1), (), 1.0):
    with pytest.raises(ValueError, match="seed="):
      FlexiSampler(_cfg(), seed=seed)
  sampler = FlexiSampler(_cfg(), seed=0)
  for step in (-1, 1.5):
    with pytest.raises(ValueError, match="step="):
      sampler(step)
  with pytest.raises(ValueError, match="'nope'"):
    sampler.values("nope")


# Curricula: a list of stages dict(until=FRACTION, v=..., p=...).

CURRICULUM = dict(seqhw=[dict(until=0.3, v=(5, 8)), dict(until=0.7, v=(8, 10, 12), p=(1, 1, 2)),
                         dict(until=1.0, v=(15,))])


def test_curriculum_counts_follow_the_stages():
  total = 4000
  sampler = FlexiSampler(CURRICULUM, seed=0, total_steps=total)
  draws = [sampler(s)["seqhw"] for s in range(total)]
  bounds = [(0, 1200, {5: 0.5, 8: 0.5}), (1200, 2800, {8: 0.25, 10: 0.25, 12: 0.5}),
            (2800, 4000, {15: 1.0})]
  for start, end, probs in bounds:
    stage = draws[start:end]
    n = end - start
    assert set(stage) == set(probs), (start, set(stage))
    for value, p in probs.items():
      sd = np.sqrt(n * p * (1 - p))
      assert abs(stage.count(value) - n * p) <= 4 * sd + 1e-9, (value, stage.count(value), n * p)
  assert sampler.values("seqhw") == (5, 8, 10, 12, 15)
  np.testing.assert_allclose(sampler.probabilities("seqhw", 1500), (0, 0.25, 0.25, 0.5, 0))
  assert [v["seqhw"] for v in sampler.all_values()] == [5, 8, 10, 12, 15]
  # A pure function of (seed, step): a fresh sampler replays any step.
  again = FlexiSampler(CURRICULUM, seed=0, total_steps=total)
  assert [again(s)["seqhw"] for s in range(3999, 1000, -7)] == draws[3999:1000:-7]


def test_curriculum_all_values_are_only_reachable_combinations():
  cfg = dict(seqhw=[dict(until=0.5, v=(4,)), dict(until=1.0, v=(8,))],
             patch_size=dict(v=((2, 2), (4, 4))))
  sampler = FlexiSampler(cfg, seed=1, total_steps=10)
  assert len(sampler.all_values()) == 4
  cfg = dict(seqhw=[dict(until=0.5, v=(4,)), dict(until=1.0, v=(8,))],
             patch_size=[dict(until=0.5, v=((2, 2),)), dict(until=1.0, v=((4, 4),))])
  combos = FlexiSampler(cfg, seed=1, total_steps=10).all_values()
  assert combos == [dict(seqhw=4, patch_size=(2, 2)), dict(seqhw=8, patch_size=(4, 4))]


@pytest.mark.parametrize("stages,total,message", [
    ([dict(until=0.5, v=(1,)), dict(until=0.4, v=(2,))], 10, r"until=0.4 must be .* increasing"),
    ([dict(until=0.5, v=(1,))], 10, "last stage must have until=1.0"),
    ([dict(until=1.0, v=(1,), q=2)], 10, "unknown keys"),
    ([dict(until=1.0, v=())], 10, "non-empty sequence"),
    ([dict(until=1.0, v=(1,))], None, "needs total_steps"),
    ([], 10, "non-empty list of stages"),
])
def test_curriculum_errors_name_the_stage(stages, total, message):
  with pytest.raises(ValueError, match=message):
    FlexiSampler(dict(seqhw=stages), seed=0, total_steps=total)
