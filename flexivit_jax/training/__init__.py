"""The training run: one loop for supervised training and distillation.

  config          the schema: defaults, overrides, and `validate` composed of the owners' checks
  demos           the bundled demo config (digits), shared by configs/ and the analyses
  flexi, curriculum  the flexi value of each step: random patch sizes, coarse-to-fine stages
  optim, losses   optimizer and schedule; supervised, distillation and mixup losses
  sharding        the device mesh and how state and batches are laid out on it
  initial_state   model, teachers and the train state at step 0 (fresh or model_init)
  compiled_steps  the jitted steps, one executable per flexi value; step_cache stores them
  evals           the run's evaluators (flexivit_jax.evaluators) and its final table
  run, cadence    a run's fixed parts; when a step logs, evaluates, checkpoints, stops
  preemption      SIGTERM or a preemption notice as a stop every process agrees on
  loop            `train_and_evaluate`: owns the run's resources and steps it to the end
"""
