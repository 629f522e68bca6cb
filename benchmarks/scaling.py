"""Scale-out figures for docs/scaling.md, all from XLA's compiled cost and memory analysis.

  python benchmarks/scaling.py [--flops_batch 4] [--out scaling.json] [--skip_memory]

Nothing is trained and no params are materialised: every train step is lowered
from abstract shapes (jax.ShapeDtypeStruct) and compiled on emulated CPU devices.

1. FLOPs per train step (forward + backward + optimizer) of FlexiViT S, B, L at
   240 px for each of the ten seqhw at the paper's batch 1024: XLA's HLO cost
   analysis of the lowered step (`.lower(...).cost_analysis()`; compiling each of
   the 30 full-size steps on this 2-core machine took minutes apiece), with one
   lowered-vs-compiled check printed. Plus the distillation teachers' forward
   pass (i1k: same-size DeiT-III at 384 px, patch 16; i21k: ViT-B/8 at 224 px).
2. Memory per device of B and L at seqhw 30 (900 tokens, the largest), global
   batch 1024, replicated vs FSDP on 8, 32 and 64 devices: params/Adam/grads bytes
   computed exactly from the abstract state and the trainer's sharding rule on an
   emulated mesh, activations from `.compile().memory_analysis()` (see
   `measure_memory`).
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
  from flexivit_jax.training import config as config_lib
  from flexivit_jax.training import optim
  from flexivit_jax.training import compiled_steps
  from flexivit_jax.training import initial_state
  from flexivit_jax.training import sharding
  from flexivit_jax.models.vit import FlexiViT
  model = FlexiViT(num_classes=1000, variant=variant, patch_size=(32, 32), posemb_size=(7, 7),
                   pool_type="tok", depth=depth)
  config = config_lib.default_config()
  tx, _ = optim.make_optimizer(config, 10_000)
  mesh = sharding.make_mesh({"data": -1, "fsdp": fsdp}, devices)
  init = initial_state.make_init_fn(model, tx, (IMAGE, IMAGE, 3), (("seqhw", 30),), None)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = jax.tree.map(lambda a: sharding.state_sharding(mesh, a.shape, param_sharding),
                           abstract)
  step = compiled_steps.make_train_step(model, tx, compiled_steps.make_loss_fn(config), (), seed=0,
                                 mixup_p=0.0)
  jitted = jax.jit(step, static_argnames=("flexi",), out_shardings=(shardings, None),
                   donate_argnums=(0,))
  return jitted, abstract, shardings, sharding.batch_sharding(mesh)


def abstract_batch(batch: int, sharding=None):
  import jax
  import jax.numpy as jnp
  return {"image": jax.ShapeDtypeStruct((batch, IMAGE, IMAGE, 3), jnp.float32, sharding=sharding),
          "labels": jax.ShapeDtypeStruct((batch, 1000), jnp.float32, sharding=sharding)}


def with_sharding(abstract, shardings):
  import jax
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def flops_of(lowered_or_compiled) -> float:
  """FLOPs (not GFLOPs: the projections are in FLOPs) from XLA's cost analysis."""
  from flexivit_jax.evaluators.flops import gflops
  return gflops(lowered_or_compiled) * 1e9


def teacher_flops(spec: str, batch: int, depth=None) -> float:
  """Forward FLOPs per example of a teacher 'V@<px>/<patch>' (lowered HLO)."""
  import jax
  import jax.numpy as jnp
  from flexivit_jax.models.vit import FlexiViT
  variant, rest = spec.split("@")
  px, patch = map(int, rest.split("/"))
  depth = depth or DEPTH[variant]
  model = FlexiViT(num_classes=1000, variant=variant, patch_size=(patch, patch),
                   posemb_size=(px // patch, px // patch), pool_type="tok", depth=depth)
  x = jax.ShapeDtypeStruct((batch, px, px, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, px, px, 3)))["params"])
  fn = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
  return flops_of(fn.lower(params, x)) / batch


def lowered(variant, seqhw, batch, devices, depth=None):
  depth = depth or DEPTH[variant]
  jitted, abstract, shardings, bsh = student_step(variant, devices, 1, "replicated", depth)
  return jitted.lower(with_sharding(abstract, shardings), {}, abstract_batch(batch, bsh),
                      flexi=(("seqhw", seqhw),)), abstract


def in_depth(fn, variant: str) -> float:
  """fn(depth) at the variant's real depth from fn(1) and fn(2).

  Every encoder block is the same computation, so FLOPs are exactly linear in
  depth: f(D) = f(1) + (D - 1) * (f(2) - f(1)). Lowering depth 1 and 2 instead of
  12/24 blocks is what makes 30 steps affordable on this machine.
  """
  one, two = fn(1), fn(2)
  return one + (DEPTH[variant] - 1) * (two - one)


def measure_flops(batch: int, variants=("S", "B", "L")) -> dict:
  """Per train step at `batch`, from XLA's HLO cost analysis of the lowered step.

  Lowering traces only (no backend compile), so the paper's batch is used as is.
  Checks printed beside: extrapolated vs full depth, lowered vs compiled.
  """
  import jax
  dev = jax.devices()[:1]
  out = {"batch": batch, "per_step": {}, "params": {}}
  for variant in variants:
    for seqhw in SEQHWS:
      t0 = time.time()
      value = in_depth(lambda d: flops_of(lowered(variant, seqhw, batch, dev, depth=d)[0]),
                       variant)
      out["per_step"][f"{variant}/{seqhw}"] = value
      print(f"flops {variant} seqhw={seqhw}: {value / 1e12:.2f} TFLOP/step "
            f"({time.time() - t0:.0f}s)", flush=True)
    abstract = student_step(variant, dev, 1, "replicated", DEPTH[variant])[1]
    out["params"][variant] = int(sum(a.size for a in jax.tree.leaves(abstract["params"])))
  out["teacher_per_example"] = {
      t: in_depth(lambda d: teacher_flops(t, 8, d), t.split("@")[0])
      for t in sorted({r[5] for r in RECIPES}) if t.split("@")[0] in variants}
  if "S" not in variants:
    return out
  low, _ = lowered("S", 5, 4, dev, depth=1)
  full = flops_of(lowered("S", 5, batch, dev)[0])
  out["check"] = dict(lowered_depth1=flops_of(low), compiled_depth1=flops_of(low.compile()),
                      full_depth=full, extrapolated=out["per_step"]["S/5"])
  print(f"checks: {out['check']}", flush=True)
  return out


def _state_bytes(variant: str, n: int, mode: str) -> dict:
  """Exact bytes per device of params, Adam state and grads under the sharding rule
  (the same count `train --plan` uses: flexivit_jax.training.plan.sharded_bytes)."""
  import jax
  from flexivit_jax.training import plan
  _, abstract, _, _ = student_step(variant, jax.devices()[:1], 1, "replicated", DEPTH[variant])
  fsdp = n if mode == "fsdp" else 1
  leaves = lambda tree: [(a.shape, a.dtype.itemsize) for a in jax.tree.leaves(tree)]
  state = plan.sharded_bytes(leaves(abstract), fsdp, mode)
  grads = plan.sharded_bytes(leaves(abstract["params"]), fsdp, mode)
  full_params = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract["params"]))
  return dict(state=state, grads=grads, gathered=full_params if mode == "fsdp" else 0)


def measure_memory(device_counts, batches=(2, 4)) -> dict:
  """Per-device memory: exact state/grads bytes + activations from memory_analysis.

  Activations per example at full depth come from single-device compiles at seqhw
  30 (900 tokens, the largest) at two batch sizes and depths 1 and 2 (temp bytes
  are linear in batch and in depth); the FSDP figure adds one full copy of the
  params for the all-gathers (an upper bound: XLA may gather layer by layer).
  """
  import jax
  out = {"activations_per_example": {}}
  for variant in ("B", "L"):
    temp = {}
    for d in (1, 2):
      for b in batches:
        t0 = time.time()
        low, _ = lowered(variant, 30, b, jax.devices()[:1], depth=d)
        temp[(b, d)] = low.compile().memory_analysis().temp_size_in_bytes
        print(f"temp {variant} depth {d} batch {b}: {temp[(b, d)] / GIB:.3f} GiB "
              f"({time.time() - t0:.0f}s)", flush=True)
    b0, b1 = batches
    slope = {d: (temp[(b1, d)] - temp[(b0, d)]) / (b1 - b0) for d in (1, 2)}
    act = slope[1] + (DEPTH[variant] - 1) * (slope[2] - slope[1])
    out["activations_per_example"][variant] = act
    for n in device_counts:
      for mode in ("replicated", "fsdp"):
        parts = _state_bytes(variant, n, mode)
        parts["activations"] = act * I1K_BATCH / n
        parts["total"] = sum(parts.values())
        out[f"{variant}/{n}/{mode}"] = parts
        print(f"memory {variant} {n} devices {mode}: {parts['total'] / GIB:.1f} GiB/device",
              flush=True)
  return out


def project(flops: dict) -> list:
  """Step time, wall time and input rate per host for every recipe on every system."""
  rows = []
  for name, dataset, variant, epochs, batch, teacher in RECIPES:
    student = sum(flops["per_step"][f"{variant}/{s}"] for s in SEQHWS) / len(SEQHWS)
    step_flops = student * batch / flops["batch"] + flops["teacher_per_example"][teacher] * batch
    images = I1K_IMAGES if dataset == "i1k" else I21K_IMAGES
    steps = epochs * images / batch
    for system, s in SYSTEMS.items():
      step_s = step_flops / (s["devices"] * s["peak"] * MFU)
      rows.append(dict(recipe=name, system=system, step_flops=step_flops, steps=steps,
                       step_s=step_s, wall_h=steps * step_s / 3600,
                       img_per_s_per_host=batch / step_s / s["hosts"]))
  return rows


def render(r: dict) -> str:
  """Markdown tables of a result dict (docs/scaling.md quotes them verbatim)."""
  f, lines = r["flops"], []
  lines += ["### FLOPs per train step, batch %d, 240 px (TFLOP)" % f["batch"], "",
            "| seqhw | patch | " + " | ".join(f"FlexiViT-{v} ({f['params'][v] / 1e6:.1f}M)"
                                             for v in "SBL") + " |",
            "|---|---|---|---|---|"]
  for q in SEQHWS:
    lines.append(f"| {q} | {IMAGE // q} | " + " | ".join(
        f"{f['per_step'][f'{v}/{q}'] / 1e12:.1f}" for v in "SBL") + " |")
  lines.append("| mean (uniform seqhw) | | " + " | ".join(
      f"{sum(f['per_step'][f'{v}/{q}'] for q in SEQHWS) / len(SEQHWS) / 1e12:.1f}"
      for v in "SBL") + " |")
  lines += ["", "Teacher forward per example (GFLOP): " + ", ".join(
      f"{t} {x / 1e9:.1f}" for t, x in f["teacher_per_example"].items()) + ".", ""]
  c = f["check"]
  lines += [f"Checks: S at seqhw 5, depth 1, batch 4: lowered {c['lowered_depth1'] / 1e9:.4f} "
            f"GFLOP, compiled {c['compiled_depth1'] / 1e9:.4f} GFLOP; S at seqhw 5, batch "
            f"{f['batch']}: full 12-block lowering {c['full_depth'] / 1e12:.4f} TFLOP, "
            f"extrapolated from depths 1 and 2 {c['extrapolated'] / 1e12:.4f} TFLOP.", ""]
  if "memory" in r:
    m = r["memory"]
    lines += ["### Memory per device, seqhw 30, global batch 1024 (GiB)", "",
              "| model | devices | mode | state (params+Adam) | grads | gathered params | "
              "activations | total | fits 16 / 32 / 80 GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for key, v in m.items():
      if key.count("/") != 2:
        continue
      variant, n, mode = key.split("/")
      fits = " / ".join("yes" if v["total"] <= g * GIB else "no" for g in (16, 32, 80))
      lines.append(f"| {variant} | {n} | {mode} | {v['state'] / GIB:.2f} | {v['grads'] / GIB:.2f} | "
                   f"{v['gathered'] / GIB:.2f} | {v['activations'] / GIB:.1f} | "
                   f"{v['total'] / GIB:.1f} | {fits} |")
    lines += ["", "Activations per example (seqhw 30, f32, no rematerialisation): " + ", ".join(
        f"{k} {x / GIB:.3f} GiB" for k, x in m["activations_per_example"].items()) + ".", ""]
  lines += ["### Projected step and wall time at MFU %.0f%%" % (100 * r["mfu"]), "",
            "| recipe | system | TFLOP/step | steps | step (s) | wall (h) | img/s per host |",
            "|---|---|---|---|---|---|---|"]
  for p in r["projections"]:
    lines.append(f"| {p['recipe']} | {p['system']} | {p['step_flops'] / 1e12:.0f} | "
                 f"{p['steps']:,.0f} | {p['step_s']:.2f} | {p['wall_h']:,.0f} | "
                 f"{p['img_per_s_per_host']:,.0f} |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--flops_batch", type=int, default=I1K_BATCH)
  p.add_argument("--memory_devices", default="8,32,64")
  p.add_argument("--skip_memory", action="store_true")
  p.add_argument("--only_memory", action="store_true")
  p.add_argument("--variants", default="S,B,L")
  p.add_argument("--merge", nargs="*", default=None, help="jsons of partial runs to combine")
  p.add_argument("--out", default="scaling.json")
  p.add_argument("--render", default=None, help="print the tables of this json and exit")
  args = p.parse_args()
  if args.render:
    with open(args.render) as f:
      print(render(json.load(f)))
    return
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
  if args.merge:  # Parts measured by parallel runs (--variants / --only_memory).
    for path in args.merge:
      with open(path) as f:
        part = json.load(f)
      if "memory" in part:
        result["memory"] = part["memory"]
      for key, value in part.get("flops", {}).items():
        if isinstance(value, dict):
          result.setdefault("flops", {}).setdefault(key, {}).update(value)
        else:
          result.setdefault("flops", {})[key] = value
    result["projections"] = project(result["flops"])
  elif not args.only_memory:
    result["flops"] = measure_flops(args.flops_batch, args.variants.split(","))
    if len(result["flops"]["params"]) == 3:
      result["projections"] = project(result["flops"])
  if not args.skip_memory and not args.merge:
    result["memory"] = measure_memory(counts)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(f"wrote {args.out}")
  if "projections" in result:
    print(render(result))


if __name__ == "__main__":
  main()
