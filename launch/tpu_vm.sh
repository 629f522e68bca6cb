#!/usr/bin/env bash
# A TPU VM pod for flexivit_jax: create it, install the repo on every worker, run
# training on all workers, read logs, delete it. Every gcloud command is printed
# with --dry-run.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: launch/tpu_vm.sh COMMAND [--name N] [--zone Z] [--accelerator TYPE] [--version V]
                        [--bucket B] [--dry-run] [-- TRAIN ARGS...]

commands:
  create        create the TPU VM (pod slice)
  setup         copy this repo to every worker and install it with jax[tpu]
  run           start `python -m flexivit_jax.train --distributed TRAIN ARGS...` on all
                workers (--worker=all), TFDS_DATA_DIR=gs://BUCKET/tensorflow_datasets,
                output in ~/flexivit_train.log of each worker; pass --workdir gs://...
                Worker 0's log has a line per log step, eval and checkpoint
                (--progress=lines); the other workers' logs hold errors only.
  logs          print the tail of the training log of every worker
  delete        delete the TPU VM
  prepare-data  print how to prepare ImageNet into gs://BUCKET/tensorflow_datasets
                (alias: imagenet-help)

flags (defaults from the environment variables in brackets):
  --name N            TPU VM name [TPU_NAME]
  --zone Z            zone, e.g. europe-west4-a [ZONE]
  --accelerator TYPE  e.g. v3-32, v4-64 [ACCELERATOR] (default v3-32)
  --version V         TPU software version [TPU_VERSION] (default tpu-ubuntu2204-base)
  --bucket B          GCS bucket (no gs://) for data and workdirs [BUCKET]
  --dry-run           print every command, run nothing
  -h, --help          this help

example:
  launch/tpu_vm.sh run --name flexi --zone europe-west4-a --bucket my-bucket -- \
      --config configs/demo_digits.py --workdir gs://my-bucket/workdirs/demo
A restarted `run` with the same --workdir resumes from its newest checkpoint.
USAGE
}

name="${TPU_NAME:-}"
zone="${ZONE:-}"
accelerator="${ACCELERATOR:-v3-32}"
version="${TPU_VERSION:-tpu-ubuntu2204-base}"
bucket="${BUCKET:-}"
dry_run=0
command=""
train_args=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --bucket) bucket="${2#gs://}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; train_args=("$@"); break ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *)
      if [[ -n "$command" ]]; then echo "error: unexpected argument $1 (see --help)" >&2; exit 2; fi
      command="$1"; shift ;;
  esac
done

die() { echo "error: $*" >&2; exit 2; }
need() {  # need VALUE FLAG ENV
  if [[ -z "$1" ]]; then die "$COMMAND_NAME needs $2 (or the environment variable $3)"; fi
}
run_cmd() {  # Prints (dry run) or runs one command.
  if [[ "$dry_run" == 1 ]]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# On each worker (its shell expands the ~); `run` writes it, `logs` reads it.
# shellcheck disable=SC2088
log_file='~/flexivit_train.log'
COMMAND_NAME="$command"

gcloud_tpu() { run_cmd gcloud compute tpus tpu-vm "$@"; }
on_all() { gcloud_tpu ssh "$name" --zone "$zone" --worker=all --command "$1"; }

case "$command" in
  create)
    need "$name" --name TPU_NAME; need "$zone" --zone ZONE
    gcloud_tpu create "$name" --zone "$zone" --accelerator-type "$accelerator" \
      --version "$version"
    ;;
  setup)
    need "$name" --name TPU_NAME; need "$zone" --zone ZONE
    on_all "rm -rf ~/flexivit_jax && mkdir -p ~/flexivit_jax"
    for item in setup.py README.md flexivit_jax configs launch; do
      gcloud_tpu scp --recurse "$repo_dir/$item" "$name:~/flexivit_jax/" --zone "$zone" \
        --worker=all
    done
    on_all "cd ~/flexivit_jax && python3 -m pip install -U pip && python3 -m pip install 'jax[tpu]' -e . -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
    ;;
  run)
    need "$name" --name TPU_NAME; need "$zone" --zone ZONE; need "$bucket" --bucket BUCKET
    if [[ ${#train_args[@]} -eq 0 ]]; then
      die "run needs training arguments after --, e.g. -- --config configs/X.py --workdir gs://$bucket/workdirs/X"
    fi
    quoted="$(printf '%q ' "${train_args[@]}")"
    on_all "cd ~/flexivit_jax && TFDS_DATA_DIR=gs://$bucket/tensorflow_datasets nohup python3 -m flexivit_jax.train --distributed --progress=lines ${quoted}> ${log_file} 2>&1 &"
    ;;
  logs)
    need "$name" --name TPU_NAME; need "$zone" --zone ZONE
    on_all "tail -n 50 ${log_file}"
    ;;
  delete)
    need "$name" --name TPU_NAME; need "$zone" --zone ZONE
    gcloud_tpu delete "$name" --zone "$zone" --quiet
    ;;
  prepare-data|imagenet-help)
    b="${bucket:-BUCKET}"
    cat <<HELP
ImageNet cannot be downloaded automatically (its licence needs a manual download).
Prepare it once, from any machine with tensorflow-datasets and gsutil:

  1. Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from
     https://image-net.org into ~/tensorflow_datasets/downloads/manual/
  2. Build the TFDS dataset directly into the bucket:
       python3 -m pip install tensorflow-datasets tensorflow
       tfds build imagenet2012 --data_dir=gs://$b/tensorflow_datasets \\
           --manual_dir=~/tensorflow_datasets/downloads/manual
     (ImageNet-21k: build it locally the same way as imagenet21k and copy it with
      gsutil -m cp -r ~/tensorflow_datasets/imagenet21k gs://$b/tensorflow_datasets/)
  3. Put the bucket in the same region as the TPU (reads cross-region are slow and billed).
  4. \`launch/tpu_vm.sh run\` sets TFDS_DATA_DIR=gs://$b/tensorflow_datasets on every worker.
HELP
    ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown command '$command'; allowed: create setup run logs delete prepare-data" ;;
esac
