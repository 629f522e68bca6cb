"""Everything a checkpoint is on disk: big_vision npz params, orbax train states, the workdir's step directories and its lock."""
