"""The devices a run can be planned for: TPU pods and GPU hosts by name ('v3-32', '8xH100'),
each device's memory and dense bf16 peak (vendor figures), and how names count devices."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from flexivit_jax.errors import UserError

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One JAX device of a kind: its memory, its dense bf16 peak and how names count it."""
  name: str
  hbm_bytes: int
  peak_flops: float
  per_host: int  # Devices per host.
  cores_per_device: int = 1  # TPU names count TensorCores; v4/v5p devices are 2-core chips.


CHIPS = {
    "v2": Chip("TPU v2 core", 8 * GIB, 22.5e12, 8),
    "v3": Chip("TPU v3 core", 16 * GIB, 61.5e12, 8),
    "v4": Chip("TPU v4 chip", 32 * GIB, 275e12, 4, cores_per_device=2),
    "v5e": Chip("TPU v5e chip", 16 * GIB, 197e12, 4),
    "v5p": Chip("TPU v5p chip", 95 * GIB, 459e12, 4, cores_per_device=2),
    "v6e": Chip("TPU v6e chip", 32 * GIB, 918e12, 4),
    "H100": Chip("H100 SXM", 80 * GIB, 989e12, 8),
    "H200": Chip("H200 SXM", 141 * GIB, 989e12, 8),
    "A100-40": Chip("A100 40GB", 40 * GIB, 312e12, 8),
    "A100-80": Chip("A100 80GB", 80 * GIB, 312e12, 8),
}
TPU_NAME = re.compile(r"^(v2|v3|v4|v5e|v5p|v6e)-(\d+)$")
GPU_NAME = re.compile(r"^(\d+)x(H100|H200|A100-40|A100-80)$")
TOPOLOGY_EXAMPLES = ("v3-8", "v3-32", "v4-64", "v5e-256", "v5p-128", "8xH100", "8xA100-80")


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  chip: Chip
  devices: int

  @property
  def hosts(self) -> int:
    return max(1, math.ceil(self.devices / self.chip.per_host))

  def describe(self) -> str:
    return (f"{self.name}: {self.devices} x {self.chip.name}, {self.chip.hbm_bytes / GIB:.0f} GiB "
            f"each, {self.hosts} host{'s' * (self.hosts != 1)}")


def parse_topology(name: Any) -> Topology:
  """'v3-32' (TPU: the number counts TensorCores, as Cloud TPU names do) or '8xH100'."""
  text = name if isinstance(name, str) else ""
  tpu, gpu = TPU_NAME.match(text), GPU_NAME.match(text)
  if tpu:
    chip, cores = CHIPS[tpu.group(1)], int(tpu.group(2))
    if cores and cores % chip.cores_per_device == 0:
      return Topology(text, chip, cores // chip.cores_per_device)
  elif gpu and int(gpu.group(1)) > 0:
    return Topology(text, CHIPS[gpu.group(2)], int(gpu.group(1)))
  raise UserError(f"unknown topology {name!r}; allowed: TPU '<v2|v3|v4|v5e|v5p|v6e>-<cores>' "
                  f"or GPU '<N>x<H100|H200|A100-40|A100-80>', e.g. "
                  f"{', '.join(TOPOLOGY_EXAMPLES)}")
