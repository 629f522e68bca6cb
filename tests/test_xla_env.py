"""CPU XLA settings of the entry points: added unless the user set them, and in effect."""
import os
import subprocess
import sys

import pytest

from conftest import REPO
from flexivit_jax import xla_env

YNN_FLAG = xla_env.CPU_FLAGS[0]


def test_added_to_empty_flags():
  assert xla_env.merged_flags("") == (YNN_FLAG, [YNN_FLAG])


def test_the_users_flags_are_kept_and_win():
  mine = "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=dot"
  assert xla_env.merged_flags(mine) == (mine, [])
  flags, added = xla_env.merged_flags("--xla_force_host_platform_device_count=8")
  assert flags.split() == ["--xla_force_host_platform_device_count=8", YNN_FLAG]
  assert added == [YNN_FLAG]


def test_opt_out():
  env = {xla_env.KEEP_ENV: "1"}
  assert xla_env.apply_cpu_defaults(env) == [] and "XLA_FLAGS" not in env


CHILD = """
import os, sys
from flexivit_jax import xla_env
xla_env.apply_cpu_defaults()
import jax, jax.numpy as jnp
x = jnp.ones((4, 64, 64))
text = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a)).lower(x).compile().as_text()
print("ynn" in text.lower())
"""


@pytest.mark.parametrize("keep", [False, True])
def test_the_flags_reach_xla(keep):
  """Applied before JAX starts, XLA compiles no YNNPACK fusion; its default does (control)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_env.KEEP_ENV)}
  if keep:
    env[xla_env.KEEP_ENV] = "1"
  out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out[-1] == str(keep)
