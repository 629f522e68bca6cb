"""Trains a model as a config file says; checkpoints, metrics and plots go into --workdir.

  python -m flexivit_jax.train --config configs/demo_digits.py --workdir /tmp/demo
  python -m flexivit_jax.train --config configs/demo_digits.py --workdir /tmp/demo \
      [--config.total_steps=100 --config.model.variant=S ...] [--progress=lines] [--verbose]

`--config.KEY=VALUE` (or `--config.KEY VALUE`) sets any config key, FlexiViT fields
included (`config.complete`).
`--progress=bar|lines|none` (default: a bar on a terminal, else one line per log
step, checkpoint and eval, flushed, for logs) sets config.progress.
Exit status: 0 done, 2 bad input (one `error: ...` line), 3 the loss diverged,
143 preempted (SIGTERM; a checkpoint was saved); `--verbose` adds tracebacks.

Multi-host: `--num_processes=N --process_id=i --coordinator_address=host:port`
(or the FLEXIVIT_NUM_PROCESSES / FLEXIVIT_PROCESS_ID / FLEXIVIT_COORDINATOR_ADDRESS
environment variables), or `--distributed` to let JAX detect a TPU pod / SLURM job.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

from flexivit_jax import cli, paths

CONFIG_PREFIX = "--config."


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value else None


class TrainParser(cli.ArgumentParser):
  """The flags, and `--config.KEY=VALUE` overrides (which no fixed flag list can hold)
  taken out first into `args.config_overrides`: [(key, value text)] in order."""

  def parse_args(self, args=None, namespace=None):  # pylint: disable=arguments-differ
    rest, overrides = split_config_overrides(sys.argv[1:] if args is None else args)
    namespace = super().parse_args(rest, namespace)
    namespace.config_overrides = overrides
    return namespace


def build_parser() -> argparse.ArgumentParser:
  # Defaults are read when the parser is built: launch scripts set FLEXIVIT_* per process.
  p = TrainParser(__doc__, "flexivit_jax.train")
  p.add_argument("--config", required=True,
                 help="config file, `path.py[:arg]` (e.g. configs/demo_digits.py:runlocal)")
  p.add_argument("--workdir", type=paths.normalize,
                 help="directory for checkpoints, metrics and plots (local or gs://); "
                 "required unless --plan")
  p.add_argument("--plan", action="store_true",
                 help="do not train: compile the costliest train step abstractly on this CPU "
                 "and print per-device memory, FLOPs and step time on --topology, with the "
                 "settings that make it fit (writes nothing, reads no data)")
  p.add_argument("--topology", default=None,
                 help="with --plan: the pod, e.g. v3-32, v4-64, v5e-256, 8xH100 (default: "
                 "config.topology)")
  p.add_argument("--mfu", type=float, default=0.4,
                 help="with --plan: the model-FLOPs utilisation the step time is predicted at")
  p.add_argument_group("config overrides", "--config.KEY=VALUE    set any key of the config, "
                       "e.g. --config.total_steps=100\n"
                       "                      (also --config.KEY VALUE; a bare --config.KEY "
                       "sets True)")
  cli.add_progress_argument(p, default=None)
  p.add_argument("--num_cpu_devices", type=int, default=_env_int("FLEXIVIT_NUM_CPU_DEVICES"),
                 help="emulate this many CPU devices (env FLEXIVIT_NUM_CPU_DEVICES)")
  p.add_argument("--distributed", action="store_true",
                 default=bool(os.environ.get("FLEXIVIT_DISTRIBUTED")),
                 help="call jax.distributed.initialize() and let JAX detect the cluster "
                 "(TPU pod, SLURM, ...) (env FLEXIVIT_DISTRIBUTED)")
  p.add_argument("--coordinator_address", default=os.environ.get("FLEXIVIT_COORDINATOR_ADDRESS"),
                 help="host:port of process 0 (env FLEXIVIT_COORDINATOR_ADDRESS)")
  p.add_argument("--num_processes", type=int, default=_env_int("FLEXIVIT_NUM_PROCESSES"),
                 help="number of processes (env FLEXIVIT_NUM_PROCESSES)")
  p.add_argument("--process_id", type=int, default=_env_int("FLEXIVIT_PROCESS_ID"),
                 help="index of this process (env FLEXIVIT_PROCESS_ID)")
  return p


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


@cli.user_facing
def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not args.plan and not args.workdir:
    parser.error("the following arguments are required: --workdir")
  if not args.plan and args.topology:
    parser.error("--topology is only read with --plan")
  from flexivit_jax.training import config as config_lib
  overrides = args.config_overrides
  if args.progress:  # The flag wins over the config's `progress` and older `progress_bar`.
    overrides = [*overrides, ("progress", args.progress), ("progress_bar", "None")]
  # Every key and value is checked here, before JAX starts.
  config = config_lib.complete(config_lib.load_config_file(args.config), overrides)
  if args.plan:
    plan_only(config, args)
    return
  setup_jax(args.num_cpu_devices, args.distributed, args.coordinator_address,
            args.num_processes, args.process_id)
  from flexivit_jax.training import loop
  cli.quiet_libraries()
  # The run's own log lines ("resumed from ...") on stderr, beside the libraries' warnings.
  logging.basicConfig(format="%(levelname).1s %(asctime)s %(message)s")
  import jax
  if jax.process_index() != 0:  # Process 0 tells what the run does; the others, errors only.
    logging.getLogger("flexivit_jax").setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
  # Takes the workdir's lock, then writes config.json and trains; Preempted -> 143 in cli.
  loop.train_and_evaluate(config, args.workdir, name=args.config)


def plan_only(config, args) -> None:
  """`--plan`: one process, one local device, no workdir, no data, no caches written."""
  import jax
  cli.quiet_libraries()
  from flexivit_jax.training import plan
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)  # Writes nothing, not even that.
  try:
    print(plan.run_plan(config, args.topology, args.mfu, title=args.config), flush=True)
  finally:
    jax.config.update("jax_enable_compilation_cache", cache)


if __name__ == "__main__":
  main()
