"""Inference img/s of FlexiViT-S at 240 px, every patch size, against timm.

For each patch size and batch size: flexivit_jax's `Predictor` (kernel and
posemb resized once per size and kept on the device, images already on the
device as timm's are in torch) and timm's `flexivit_small` created at that patch
(pretrained=False), the two alternated over rounds in one process, torch threads
= the CPU threads JAX uses. Prints img/s medians, the ratio, and a matmul check
before and after. timm is skipped when torch/timm are not installed.

  python benchmarks/inference.py [--patches 48,16,10] [--batches 1,8] [--rounds 3]
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

import common
from flexivit_jax.models.vit import FlexiViT
from flexivit_jax.evaluators.predict import Predictor

IMAGE = 240


def jax_runner(patch: int, batch: int, predictor: Predictor):
  images = jax.device_put(
      np.random.default_rng(0).normal(size=(batch, IMAGE, IMAGE, 3)).astype(np.float32))
  predictor.sized(images.shape[1:3], patch_size=patch)  # Resized once, outside the timing.
  return lambda: predictor.predict(images, patch_size=patch)


def timm_runner(patch: int, batch: int):
  try:
    import timm
    import torch
  except ImportError:
    return None
  torch.set_num_threads(common.cpu_threads())
  net = timm.create_model("flexivit_small", pretrained=False, img_size=IMAGE,
                          patch_size=patch, num_classes=1000).eval()
  images = torch.randn(batch, 3, IMAGE, IMAGE)

  def run():
    with torch.inference_mode():
      return net(images)
  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--patches", default=",".join(map(str, common.FLEXI_PATCHES)))
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  model = FlexiViT(num_classes=1000, variant="S", patch_size=(32, 32))
  params = jax.jit(lambda: model.init(jax.random.key(0), np.zeros((1, IMAGE, IMAGE, 3)),
                                      patch_size=16)["params"])()
  predictor = Predictor(model, params)
  print(f"threads: {common.cpu_threads()}; XLA_FLAGS: {common.xla_flags()}; matmul check: "
        f"{common.matmul_gflops():.1f} GFLOP/s")
  print(f"{'patch':>5} {'batch':>5} {'jax img/s':>10} {'timm img/s':>11} {'jax/timm':>9}")
  ratios = []
  for patch in (int(p) for p in args.patches.split(",")):
    for batch in (int(b) for b in args.batches.split(",")):
      runners = {"jax": jax_runner(patch, batch, predictor),
                 "timm": timm_runner(patch, batch)}
      runners = {k: v for k, v in runners.items() if v is not None}
      for fn in runners.values():
        common.timed(fn)  # Compile / warm up.
      times = {k: [] for k in runners}
      for _ in range(args.rounds):
        for name, fn in runners.items():
          times[name].append(common.timed(fn))
      ips = {k: batch / np.median(v) for k, v in times.items()}
      if "timm" in ips:
        ratios.append(common.median_ratio(times["timm"], times["jax"]))
        print(f"{patch:>5} {batch:>5} {ips['jax']:>10.2f} {ips['timm']:>11.2f} "
              f"{ratios[-1]:>8.2f}x", flush=True)
      else:
        print(f"{patch:>5} {batch:>5} {ips['jax']:>10.2f} {'(no timm)':>11}", flush=True)
  if ratios:
    print(f"jax/timm: min {min(ratios):.2f}x, median {np.median(ratios):.2f}x "
          "(target >= 1.0x at every patch size)")
  print(f"matmul check: {common.matmul_gflops():.1f} GFLOP/s (after)")


if __name__ == "__main__":
  main()
