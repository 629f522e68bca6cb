"""Everything a checkpoint is on disk, and loading one into a model.

  npz          big_vision's npz format: flat arrays, atomic writes, legacy layouts
  layout       the encoder's per-block (on disk) and scanned (model.scan) param layouts
  sources      where params come from: npz files, released-checkpoint names, workdirs
  adapt        `load_pretrained`: a checkpoint fitted to a freshly initialised model
  step_dirs    the layout of a workdir's orbax train-state step directories
  step_health  their health from their own files; set aside, put back, listed
  manager      `StateCheckpoints`: saving and restoring train states on any mesh
  workdir_lock one training run per workdir
"""
from flexivit_jax.checkpoints.adapt import load_pretrained
from flexivit_jax.checkpoints.npz import save_params
from flexivit_jax.checkpoints.sources import load_params, resolve_checkpoint

__all__ = ["load_params", "load_pretrained", "resolve_checkpoint", "save_params"]
