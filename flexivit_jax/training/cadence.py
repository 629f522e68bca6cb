"""When a run logs, evaluates and checkpoints: one answer per step, read from the config.

Steps are counted as taken (`done` = 1 after the first step), so "every N" means
after steps N, 2N, ... and the last step always logs, evaluates and checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict


def itstime(done: int, every: int, total_steps: int) -> bool:
  """Whether `done` steps make an `every`-th step or the last one."""
  return done == total_steps or done % every == 0


def evals_due(config, done: int, steps: int) -> Dict[str, Any]:
  """The evaluators to run after step `done`: each every `log_steps` (or
  `log_percent` of the run; default `config.log_eval_steps`), all at the end."""
  def every(ev):
    if ev.get("log_percent"):
      return max(1, int(round(ev["log_percent"] * steps)))
    return ev.get("log_steps") or config.log_eval_steps
  return {name: ev for name, ev in config.evals.items() if itstime(done, every(ev), steps)}


@dataclasses.dataclass(frozen=True)
class Due:
  """What a run does after one step, in this order."""
  log: bool  # Fetch the step's metrics, write them and print a progress line.
  evals: Dict[str, Any]  # The evaluators to run (name -> its config), often none.
  checkpoint: bool  # Start saving the train state.
  stop: bool  # Preempted: finish the save, then stop.


def due_after(config, done: int, total_steps: int, *, preempted: bool) -> Due:
  """What is due after step `done`; `preempted`: every process agreed to stop here."""
  return Due(log=itstime(done, config.log_training_steps, total_steps),
             evals=evals_due(config, done, total_steps),
             checkpoint=preempted or itstime(done, config.ckpt_steps, total_steps),
             stop=preempted)
