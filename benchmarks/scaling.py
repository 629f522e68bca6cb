"""Scale-out figures for docs/scaling.md, all from XLA's compiled cost and memory analysis.

  python benchmarks/scaling.py [--flops_batch 4] [--out scaling.json] [--skip_memory]

Nothing is trained and no params are materialised: every train step is lowered
from abstract shapes (jax.ShapeDtypeStruct) and compiled on emulated CPU devices.

1. FLOPs per train step (forward + backward + optimizer) of FlexiViT S, B, L at
   240 px for each of the ten seqhw; compiled at batch `--flops_batch` and scaled
   linearly to the paper's batch 1024 (the batch-independent optimizer update is
   then counted 1024/b times: < 0.01% of a step, see the printed bound).
   Plus the distillation teachers' forward pass (i1k: same-size DeiT-III at 384 px,
   patch 16; i21k: ViT-B/8 at 224 px).
2. Memory per device (XLA's memory_analysis of the sharded compile: arguments +
   temporaries + non-aliased outputs) of B and L at seqhw 30 (the largest: 900
   tokens), global batch 1024, replicated vs FSDP on 8, 32 and 64 emulated devices.
3. Projections: step and wall time of each recipe on TPU v3-32, v4-64 and 8x H100 at
   a stated MFU and peak, and the input rate per host they need.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SEQHWS = (5, 6, 8, 10, 12, 15, 16, 20, 24, 30)
IMAGE = 240
I1K_BATCH, I21K_BATCH = 1024, 4096
I1K_IMAGES = 1_281_167  # ImageNet-1k train.
I21K_IMAGES = 14_197_122  # Full ImageNet-21k (winter 2011); an assumption, see the doc.
GIB = 2 ** 30
MFU = 0.40
# name: devices (as JAX sees them), hosts, peak dense bf16 FLOP/s per device, memory/device.
SYSTEMS = {
    "TPU v3-32": dict(devices=32, hosts=4, peak=61.5e12, mem=16 * GIB),  # 123 TFLOP/s/chip, 2 cores.
    "TPU v4-64": dict(devices=32, hosts=8, peak=275e12, mem=32 * GIB),  # 32 chips (megacore).
    "8x H100": dict(devices=8, hosts=1, peak=989e12, mem=80 * GIB),  # SXM, dense bf16.
}
RECIPES = [  # (name, dataset, student, epochs, batch, teacher)
    ("i1k S 90ep", "i1k", "S", 90, I1K_BATCH, "S@384/16"),
    ("i1k S 300ep", "i1k", "S", 300, I1K_BATCH, "S@384/16"),
    ("i1k S 1200ep", "i1k", "S", 1200, I1K_BATCH, "S@384/16"),
    ("i1k B 90ep", "i1k", "B", 90, I1K_BATCH, "B@384/16"),
    ("i1k B 300ep", "i1k", "B", 300, I1K_BATCH, "B@384/16"),
    ("i1k B 1200ep", "i1k", "B", 1200, I1K_BATCH, "B@384/16"),
    ("i1k L 90ep", "i1k", "L", 90, I1K_BATCH, "L@384/16"),
    ("i1k L 300ep", "i1k", "L", 300, I1K_BATCH, "L@384/16"),
    ("i1k L 1200ep", "i1k", "L", 1200, I1K_BATCH, "L@384/16"),
    ("i21k B 90ep", "i21k", "B", 90, I21K_BATCH, "B@224/8"),
    ("i21k B 300ep", "i21k", "B", 300, I21K_BATCH, "B@224/8"),
    ("i21k B 1000ep", "i21k", "B", 1000, I21K_BATCH, "B@224/8"),
]


def setup(num_devices: int) -> None:
  import jax
  jax.config.update("jax_num_cpu_devices", num_devices)
  jax.config.update("jax_platforms", "cpu")


DEPTH = {"S": 12, "B": 12, "L": 24}


def student_step(variant: str, devices, fsdp: int, param_sharding: str, depth: int):
  """(jitted train step, abstract state, state shardings, batch sharding) of a student."""
  import jax
  from flexivit_jax import config as config_lib, optim, trainer
  from flexivit_jax.model import FlexiViT
  model = FlexiViT(num_classes=1000, variant=variant, patch_size=(32, 32), posemb_size=(7, 7),
                   pool_type="tok", depth=depth)
  config = config_lib.default_config()
  tx, _ = optim.make_optimizer(config, 10_000)
  mesh = trainer.make_mesh({"data": -1, "fsdp": fsdp}, devices)
  init = trainer.make_init_fn(model, tx, (IMAGE, IMAGE, 3), (("seqhw", 30),), None)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = jax.tree.map(lambda a: trainer.state_sharding(mesh, a.shape, param_sharding),
                           abstract)
  step = trainer.make_train_step(model, tx, trainer.make_loss_fn(config), (), seed=0,
                                 mixup_p=0.0)
  jitted = jax.jit(step, static_argnames=("flexi",), out_shardings=(shardings, None),
                   donate_argnums=(0,))
  return jitted, abstract, shardings, trainer.batch_sharding(mesh)


def abstract_batch(batch: int, sharding=None):
  import jax
  import jax.numpy as jnp
  return {"image": jax.ShapeDtypeStruct((batch, IMAGE, IMAGE, 3), jnp.float32, sharding=sharding),
          "labels": jax.ShapeDtypeStruct((batch, 1000), jnp.float32, sharding=sharding)}


def with_sharding(abstract, shardings):
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def compile_step(variant, seqhw, batch, devices, fsdp=1, param_sharding="replicated",
                 depth=None):
  depth = depth or DEPTH[variant]
  jitted, abstract, shardings, bsh = student_step(variant, devices, fsdp, param_sharding, depth)
  t0 = time.time()
  compiled = jitted.lower(with_sharding(abstract, shardings), {}, abstract_batch(batch, bsh),
                          flexi=(("seqhw", seqhw),)).compile()
  return compiled, time.time() - t0, abstract


def flops_of(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def in_depth(fn, variant: str) -> float:
  """fn(depth) at the variant's real depth, from compiles at depth 1 and 2.

  Every encoder block is the same computation, so FLOPs and saved activations are
  exactly linear in depth: value(D) = value(1) + (D - 1) * (value(2) - value(1)).
  """
  one, two = fn(1), fn(2)
  return one + (DEPTH[variant] - 1) * (two - one)


def teacher_forward_flops(spec: str, batch: int) -> float:
  """Forward FLOPs per example of a teacher 'V@<px>/<patch>' (from depths 1 and 2)."""
  return in_depth(lambda d: _teacher_flops(spec, batch, d), spec.split("@")[0])


def _teacher_flops(spec: str, batch: int, depth: int) -> float:
  import jax
  import jax.numpy as jnp
  from flexivit_jax.model import FlexiViT
  variant, rest = spec.split("@")
  px, patch = map(int, rest.split("/"))
  model = FlexiViT(num_classes=1000, variant=variant, patch_size=(patch, patch),
                   posemb_size=(px // patch, px // patch), pool_type="tok", depth=depth)
  x = jax.ShapeDtypeStruct((batch, px, px, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, px, px, 3)))["params"])
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  return flops_of(fn.lower(params, x).compile()) / batch


def measure_flops(batch: int) -> dict:
  import jax
  dev = jax.devices()[:1]
  out = {"batch_compiled": batch, "per_example": {}, "params": {}}
  flops = lambda v, q, d: flops_of(compile_step(v, q, batch, dev, depth=d)[0]) / batch
  for variant in ("S", "B", "L"):
    for seqhw in SEQHWS:
      t0 = time.time()
      out["per_example"][f"{variant}/{seqhw}"] = in_depth(lambda d: flops(variant, seqhw, d),
                                                          variant)
      print(f"flops {variant} seqhw={seqhw}: {out['per_example'][f'{variant}/{seqhw}'] / 1e9:.1f}"
            f" GFLOP/example ({time.time() - t0:.0f}s)", flush=True)
    abstract = student_step(variant, dev, 1, "replicated", DEPTH[variant])[1]
    out["params"][variant] = int(sum(a.size for a in jax.tree.leaves(abstract["params"])))
  out["teacher_per_example"] = {t: teacher_forward_flops(t, batch)
                                for t in sorted({r[5] for r in RECIPES})}
  # Check of the depth extrapolation: one full-depth compile.
  out["check_S/8_full_depth"] = flops("S", 8, DEPTH["S"])
  print(f"check S seqhw=8: full depth {out['check_S/8_full_depth'] / 1e9:.3f} vs extrapolated "
        f"{out['per_example']['S/8'] / 1e9:.3f} GFLOP/example", flush=True)
  return out


def measure_memory(batch: int, device_counts) -> dict:
  """Bytes per device (args + temp + outputs - aliased), extrapolated in depth."""
  import jax
  out = {}
  for variant in ("B", "L"):
    for n in device_counts:
      for mode in ("replicated", "fsdp"):
        parts = {}

        def total(depth):
          m = compile_step(variant, 30, batch, jax.devices()[:n], fsdp=n if mode == "fsdp" else 1,
                           param_sharding=mode, depth=depth)[0].memory_analysis()
          parts[depth] = dict(arguments=m.argument_size_in_bytes, temp=m.temp_size_in_bytes)
          return (m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
                  - m.alias_size_in_bytes)
        t0 = time.time()
        value = in_depth(total, variant)
        args_d = in_depth(lambda d: parts[d]["arguments"], variant)
        out[f"{variant}/{n}/{mode}"] = dict(total=value, arguments=args_d)
        print(f"memory {variant} {n} devices {mode}: {value / GIB:.1f} GiB/device "
              f"(state arguments {args_d / GIB:.2f} GiB; {time.time() - t0:.0f}s)", flush=True)
  return out


def project(flops: dict) -> list:
  """Step time, wall time and input rate per host for every recipe on every system."""
  rows = []
  for name, dataset, variant, epochs, batch, teacher in RECIPES:
    student = sum(flops["per_example"][f"{variant}/{s}"] for s in SEQHWS) / len(SEQHWS)
    per_example = student + flops["teacher_per_example"][teacher]
    step_flops = per_example * batch
    images = I1K_IMAGES if dataset == "i1k" else I21K_IMAGES
    steps = epochs * images / batch
    for system, s in SYSTEMS.items():
      step_s = step_flops / (s["devices"] * s["peak"] * MFU)
      rows.append(dict(recipe=name, system=system, step_flops=step_flops, steps=steps,
                       step_s=step_s, wall_h=steps * step_s / 3600,
                       img_per_s_per_host=batch / step_s / s["hosts"]))
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--flops_batch", type=int, default=4)
  p.add_argument("--memory_devices", default="8,32,64")
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument("--out", default="scaling.json")
  args = p.parse_args()
  counts = [int(x) for x in args.memory_devices.split(",")]
  setup(max(counts))
  import numpy as np
  a = np.random.default_rng(0).standard_normal((1024, 1024), np.float32)
  t0 = time.time()
  for _ in range(5):
    a @ a
  gflops = 5 * 2 * 1024 ** 3 / (time.time() - t0) / 1e9
  print(f"machine: numpy 1024^2 matmul {gflops:.0f} GFLOP/s", flush=True)
  result = {"matmul_gflops": gflops, "mfu": MFU, "systems": SYSTEMS}
  result["flops"] = measure_flops(args.flops_batch)
  result["projections"] = project(result["flops"])
  if not args.skip_memory:
    result["memory"] = measure_memory(I1K_BATCH, counts)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
