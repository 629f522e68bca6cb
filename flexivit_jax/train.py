"""Entry point: flags, distributed init, hand-off to `loop.train_and_evaluate`.

  python -m flexivit_jax.train --config configs/demo_digits.py --workdir /tmp/demo \
      [--config.total_steps=100 --config.model.variant=S ...] [--progress=lines] [--verbose]

`--config.KEY=VALUE` sets any config key, FlexiViT fields included (`config.complete`).
`--progress=bar|lines|none` (default: a bar on a terminal, else one line per log
step, checkpoint and eval, flushed, for logs) sets config.progress.
Exit status: 0 done, 2 bad input (one `error: ...` line), 3 the loss diverged,
143 preempted (SIGTERM; a checkpoint was saved); `--verbose` adds tracebacks.

Multi-host: `--num_processes=N --process_id=i --coordinator_address=host:port`
(or the FLEXIVIT_NUM_PROCESSES / FLEXIVIT_PROCESS_ID / FLEXIVIT_COORDINATOR_ADDRESS
environment variables), or `--distributed` to let JAX detect a TPU pod / SLURM job.
"""
from __future__ import annotations

import logging
import os

from typing import List, Sequence, Tuple

from absl import flags
from absl import logging as absl_logging

from flexivit_jax import cli, paths
from flexivit_jax.errors import UserError
from flexivit_jax.outputs.console import PROGRESS_MODES

FLAGS = flags.FLAGS
CONFIG_PREFIX = "--config."
flags.DEFINE_string("config", None, "Config file, `path.py[:arg]`; set any key with "
                    "--config.KEY=VALUE.")
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
flags.DEFINE_enum("progress", None, list(PROGRESS_MODES),
                  "What the run shows while it trains (sets config.progress): a bar on a "
                  "terminal, one plain line per log step, checkpoint and eval (logs, pods, "
                  "SLURM, nohup), or nothing but the final table. Default: the config's, "
                  "'auto' = a bar on a terminal, lines otherwise.")


def _env_int(name: str):
  value = os.environ.get(name)
  return int(value) if value else None


# Multi-process settings can also come from the environment (launch scripts).
flags.DEFINE_integer("num_cpu_devices", _env_int("FLEXIVIT_NUM_CPU_DEVICES"),
                     "Emulate this many CPU devices.")
flags.DEFINE_bool("distributed", bool(os.environ.get("FLEXIVIT_DISTRIBUTED")),
                  "Call jax.distributed.initialize() and let JAX detect the cluster "
                  "(TPU pod, SLURM, ...).")
flags.DEFINE_string("coordinator_address", os.environ.get("FLEXIVIT_COORDINATOR_ADDRESS"),
                    "host:port of process 0.")
flags.DEFINE_integer("num_processes", _env_int("FLEXIVIT_NUM_PROCESSES"),
                     "Number of processes.")
flags.DEFINE_integer("process_id", _env_int("FLEXIVIT_PROCESS_ID"), "Index of this process.")


def setup_jax(num_cpu_devices=None, distributed=False, coordinator_address=None,
              num_processes=None, process_id=None) -> None:
  """Configures devices and multi-process JAX; must run before any JAX use."""
  import jax
  if num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
  if num_processes and num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif distributed:
    jax.distributed.initialize()


def split_config_overrides(argv: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
  """Takes `--config.KEY=VALUE` (or `--config.KEY VALUE`) out of argv: (rest, overrides)."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(CONFIG_PREFIX):
      key, eq, value = arg[len(CONFIG_PREFIX):].partition("=")
      if not eq:  # `--config.KEY VALUE`, or a bare `--config.KEY` meaning True.
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        value = argv[i + 1] if has_value else "True"
        i += has_value
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def parse_flags(argv: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
  rest, overrides = split_config_overrides(argv)
  return cli.parse_absl_flags(rest), overrides


def main(parsed) -> None:
  argv, overrides = parsed
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; flags look like --name=value")
  if not FLAGS.config:
    raise UserError("--config is required (a config file, e.g. configs/demo_digits.py)")
  if not FLAGS.workdir:
    raise UserError("--workdir is required (where checkpoints and metrics go)")
  from flexivit_jax.training import config as config_lib
  if FLAGS.progress:  # The flag wins over the config's `progress` and older `progress_bar`.
    overrides = [*overrides, ("progress", FLAGS.progress), ("progress_bar", "None")]
  # Every key and value is checked here, before JAX starts.
  config = config_lib.complete(config_lib.load_config_file(FLAGS.config), overrides)
  setup_jax(FLAGS.num_cpu_devices, FLAGS.distributed, FLAGS.coordinator_address,
            FLAGS.num_processes, FLAGS.process_id)
  from flexivit_jax.training import loop
  cli.quiet_libraries()
  import jax
  if jax.process_index() != 0:  # Process 0 tells what the run does; the others, errors only.
    logging.getLogger("flexivit_jax").setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)
  # Takes the workdir's lock, then writes config.json and trains; Preempted -> 143 in cli.
  loop.train_and_evaluate(config, paths.normalize(FLAGS.workdir), name=FLAGS.config)


def run() -> None:
  """Console script `flexivit-train`."""
  cli.run_absl(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
