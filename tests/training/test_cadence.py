"""When a run logs, evaluates, checkpoints and stops."""
from conftest import load_config
from flexivit_jax.training import cadence


def test_each_eval_runs_at_its_own_cadence():
  config = load_config(**{"log_eval_steps": 4, "evals.fast": dict(
      data=dict(name="sklearn_digits", split="test"), pp="keep", log_steps=2)})
  due = {d: sorted(cadence.evals_due(config, d, 8)) for d in range(1, 9)}
  assert due == {1: [], 2: ["fast"], 3: [], 4: ["fast", "test"], 5: [], 6: ["fast"], 7: [],
                 8: ["fast", "test"]}


def test_log_percent_is_a_share_of_the_run():
  config = load_config(**{"evals.test.log_percent": 0.25})
  assert [d for d in range(1, 11) if cadence.evals_due(config, d, 10)] == [2, 4, 6, 8, 10]


def test_logs_and_checkpoints_every_n_and_at_the_last_step():
  config = load_config(log_training_steps=3, ckpt_steps=4)
  due = [cadence.due_after(config, d, 10, preempted=False) for d in range(1, 11)]
  assert [d for d, x in enumerate(due, 1) if x.log] == [3, 6, 9, 10]
  assert [d for d, x in enumerate(due, 1) if x.checkpoint] == [4, 8, 10]
  assert not any(x.stop for x in due)


def test_preemption_checkpoints_and_stops_at_any_step():
  due = cadence.due_after(load_config(ckpt_steps=4), 5, 10, preempted=True)
  assert due.checkpoint and due.stop
