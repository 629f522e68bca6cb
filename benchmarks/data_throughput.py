"""Input pipeline throughput: random access vs tf.data streaming, side by side.

  python benchmarks/data_throughput.py [--workers 1,2] [--rounds 3]

Both paths of `data.train_iterator` run the paper's train pp at 240 px
(decode|inception_crop|flip_lr|resize(240)|value_range(-1,1)), batch 64, on
1. an image folder of real photos: JPEGs of 300-500 px cut with PIL from
   scikit-image's sample photos, written to a temp dir at start;
2. mock ImageNet (`tfds.testing.mock_data`: random-size JPEGs).
`--workers` sets how many examples are preprocessed in parallel (the
`num_threads` argument, tf.data's num_parallel_calls) for both paths. The two
paths alternate within each round, and a numpy matmul GFLOP/s figure is taken
every round, because this shared VM's speed swings between runs: read the
ratio column, not the absolute numbers.
"""
import argparse
import itertools
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

PP = ('decode|inception_crop|flip_lr|resize(240)|value_range(-1,1)|'
      'keep("image","label")')
PHOTOS = ("astronaut", "cat", "chelsea", "coffee", "rocket", "colorwheel",
          "immunohistochemistry", "hubble_deep_field", "retina", "camera",
          "brick", "grass", "gravel", "moon", "coins", "clock")


def matmul_gflops(n=1024, reps=5):
  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  a @ a
  t = time.perf_counter()
  for _ in range(reps):
    a @ a
  return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def make_photo_folder(root, num_images, seed=0):
  """root/train/<photo name>/*.jpg: random crops of 300-500 px, JPEG q90."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
            for n in PHOTOS]
  for i in range(num_images):
    k = i % len(photos)
    img = photos[k]
    w, h = img.size
    cw, ch = rng.integers(w // 2, w + 1), rng.integers(h // 2, h + 1)
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    size = tuple(int(s) for s in rng.integers(300, 501, 2))
    out = img.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
    d = os.path.join(root, "train", PHOTOS[k])
    os.makedirs(d, exist_ok=True)
    out.save(os.path.join(d, f"{i:04d}.jpg"), quality=90)
  return root


def examples_per_s(it, batch, batches, warmup):
  """(examples/s, CPU ms per example over all threads of this process)."""
  with it:
    for _ in itertools.islice(it, warmup):
      pass
    t, cpu = time.perf_counter(), time.process_time()
    for b in itertools.islice(it, batches):
      pass
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
  assert b["image"].shape == (batch, 240, 240, 3), b["image"].shape
  return batch * batches / dt, 1e3 * dcpu / (batch * batches)


def measure(cfg, workers, args):
  """{path: [examples/s per round]} with the two paths alternating."""
  from flexivit_jax import data  # pylint: disable=g-import-not-at-top
  out = {"random access": [], "tf.data streaming": [], "gflops": [],
         "random access cpu": [], "tf.data streaming cpu": []}
  for r in range(args.rounds):
    out["gflops"].append(matmul_gflops())
    order = [False, True] if r % 2 == 0 else [True, False]
    for streaming in order:
      it = data.train_iterator(dict(cfg, streaming=streaming), PP, args.batch,
                               seed=r, process_index=0, process_count=1,
                               num_threads=workers)
      eps, cpu_ms = examples_per_s(it, args.batch, args.batches, args.warmup)
      path = "tf.data streaming" if streaming else "random access"
      out[path].append(eps)
      out[path + " cpu"].append(cpu_ms)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workers", default="1,2",
                 help="comma-separated parallel pp worker counts")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--batches", type=int, default=None,
                 help="timed per run (default: two epochs)")
  p.add_argument("--warmup", type=int, default=None,
                 help="untimed batches first (default: one epoch, so the "
                 "streaming shuffle buffer is past its first fill)")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--datasets", default="photos,mock_imagenet")
  args = p.parse_args()
  epoch = -(-args.images // args.batch)
  args.warmup = epoch if args.warmup is None else args.warmup
  args.batches = 2 * epoch if args.batches is None else args.batches

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tmp = tempfile.mkdtemp(prefix="flexivit_bench_")
  datasets = args.datasets.split(",")
  rows = []
  try:
    for name in datasets:
      for workers in [int(w) for w in args.workers.split(",")]:
        if name == "photos":
          root = os.path.join(tmp, "photos")
          if not os.path.isdir(root):
            make_photo_folder(root, args.images)
          res = measure({"folder": root, "split": "train"}, workers, args)
        else:
          with tfds.testing.mock_data(num_examples=args.images):
            res = measure({"name": "imagenet2012", "split": "train"}, workers,
                          args)
        rows.append((name, workers, res))
        ra, st = res["random access"], res["tf.data streaming"]
        print(f"{name:14s} workers={workers}: random access "
              f"{[round(x) for x in ra]}  streaming {[round(x) for x in st]}  "
              f"matmul {[round(x) for x in res['gflops']]} GFLOP/s  CPU ms/ex "
              f"{[round(x, 2) for x in res['random access cpu']]} vs "
              f"{[round(x, 2) for x in res['tf.data streaming cpu']]}",
              flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)

  print(f"\ncpus={os.cpu_count()}  batch={args.batch}  {args.rounds} rounds x "
        f"{args.batches} batches; medians over rounds. wall ratio = random "
        f"access / streaming examples/s per round (median, range); CPU ratio = "
        f"streaming / random access CPU ms per example (>1: random access is "
        f"cheaper), the figure that load from other processes disturbs least")
  print("| data | workers | random access ex/s | streaming ex/s | wall ratio | "
        "CPU ms/example RA / streaming | CPU ratio | matmul GFLOP/s |")
  print("|---|---|---|---|---|---|---|---|")
  med = statistics.median
  for name, workers, res in rows:
    ra, st = res["random access"], res["tf.data streaming"]
    ra_cpu, st_cpu = res["random access cpu"], res["tf.data streaming cpu"]
    ratios = [a / b for a, b in zip(ra, st)]
    print(f"| {name} | {workers} | {med(ra):.0f} | {med(st):.0f} | "
          f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
          f"{med(ra_cpu):.2f} / {med(st_cpu):.2f} | "
          f"{med([b / a for a, b in zip(ra_cpu, st_cpu)]):.2f}x | "
          f"{med(res['gflops']):.0f} |")


if __name__ == "__main__":
  main()
