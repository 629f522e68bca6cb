"""The mesh and the fsdp sharding rule."""
import jax
import pytest

from flexivit_jax.training import sharding


def test_mesh_and_fsdp_sharding_rules():
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
  assert mesh.shape == {"data": jax.device_count(), "fsdp": 1}
  with pytest.raises(ValueError, match="does not fit the"):
    sharding.make_mesh({"data": 3, "fsdp": 5})
  assert sharding.state_sharding(mesh, (64, 32), "fsdp").spec == jax.sharding.PartitionSpec()


def test_fsdp_rule_splits_the_largest_divisible_axis():
  P = jax.sharding.PartitionSpec
  mesh = jax.sharding.AbstractMesh((2, 4), ("data", "fsdp"))  # fsdp > 1 without 8 devices.
  rule = lambda shape, mode="fsdp": sharding.state_sharding(mesh, shape, mode).spec
  assert rule((64, 32)) == P("fsdp", None)
  assert rule((6, 8)) == P(None, "fsdp")  # 6 is not divisible by 4.
  assert rule((3, 32, 16)) == P(None, "fsdp", None)
  assert rule((6, 3)) == P() and rule(()) == P() and rule((2,)) == P()
  assert rule((64, 32), "replicated") == P()
