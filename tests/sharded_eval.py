"""A config's evaluators on 1 device and on 8 emulated CPU devices, from one subprocess (the
device count is fixed when JAX starts): used by the tests that padding and sharding change
no eval number."""
import json
import os
import subprocess
import sys
import textwrap
from typing import Optional

from conftest import REPO

# argv: config spec, eval batch size, image side, JSON of model fields to override.
EVAL_ON_1_AND_8 = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import numpy as np
    from flexivit_jax.models import tasks
    from flexivit_jax.training import config as config_lib, evals, sharding
    spec, batch_size, side, fields = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    c = config_lib.load_config_file(spec).to_dict()
    c["evals"]["test"]["batch_size"] = batch_size
    config = config_lib.complete(c)
    model = tasks.from_config(dict(config.model, **json.loads(fields)), config.task)
    params = model.init(jax.random.key(1), np.zeros((1, side, side, 3)), seqhw=2)["params"]
    flexis = [(("seqhw", 2),), (("seqhw", 4),)]
    out = {}
    for n in (1, 8):
      mesh = sharding.make_mesh(dict(data=-1), devices=jax.devices()[:n])
      out[n] = evals.evaluate(evals.build_evaluators(config, model, mesh), params, flexis)
    print(json.dumps({"devices": jax.device_count(), **{str(k): v for k, v in out.items()}}))
""")


def eval_on_1_and_8_devices(config_spec: str, *, batch_size: int, image_side: int,
                            model_fields: Optional[dict] = None,
                            data_dir: Optional[str] = None) -> dict:
  """{"devices": 8, "1": {metric: value}, "8": {...}}: the config's evaluators (its
  `evals.test` batch set to `batch_size`) at seqhw 2 and 4, on a mesh of 1 device and on
  one of 8, for one random init (`model_fields` override the config's model). `data_dir`:
  the FLEXIVIT_DATA_DIR of the subprocess (default: this process's environment)."""
  env = {**os.environ, "FLEXIVIT_DATA_DIR": data_dir} if data_dir else None
  proc = subprocess.run(
      [sys.executable, "-c", EVAL_ON_1_AND_8, config_spec, str(batch_size), str(image_side),
       json.dumps(model_fields or {})], cwd=REPO, capture_output=True, text=True, timeout=600,
      env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
