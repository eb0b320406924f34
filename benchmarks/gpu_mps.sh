#!/usr/bin/env bash
# Does NVIDIA's Multi-Process Service let many graphed trials share one GPU? Run on a GPU machine,
# as root, from the repo root (after benchmarks/gpu_check.sh, whose unpacked /tmp/bp it reuses).
#
#   benchmarks/gpu_mps.sh [OUT_DIR]
#
# Without MPS the GPU time-slices between processes: each graphed trial keeps the GPU busy, so N
# trials at once each run about N times slower (gpu_check.sh's step 3). With MPS the kernels of
# several processes run side by side on the SMs. This measures, with the MPS daemon running:
#   1. 1/8/16 concurrent 60-epoch chapter trainings (benchmarks/gpu_share.py);
#   2. the default sweep at --gpus-per-trial 1/16;
# and then the same sweep without MPS, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
pack=/tmp/bp
if [ -d .gpu-pack ]; then
  [ -d $pack/cifar10 ] || { mkdir -p $pack && tar -xJf .gpu-pack/data.tar.xz -C $pack; }
  [ -d $pack/site ] || { mkdir -p $pack && tar -xJf .gpu-pack/site.tar.xz -C $pack; }
  export BIRDPLANE_DATA="${BIRDPLANE_DATA:-$pack/cifar10}" BIRDPLANE_CACHE="${BIRDPLANE_CACHE:-$pack/cache}"
  export PYTHONPATH="$pack/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  [ -f $pack/site/.compiled ] || (python3 -m compileall -q -j 8 $pack/site >/dev/null 2>&1; touch $pack/site/.compiled) &
fi
step() { echo "[gpu_mps $(date +%T)] $*" >&2; }
sweep() {  # name, share -> prints "name: wall s, best val_acc"
  local t0 t1
  t0=$(date +%s.%N)
  python3 -m study.cli sweep --name "$1" --storage-path "$out/ray" --tracking-uri "sqlite:///$out/mlflow.db" \
    --gpus-per-trial "$2" --json > "$out/$1.json" 2> "$out/$1.err"
  t1=$(date +%s.%N)
  python3 -c "import json,sys; s=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); print(f'{sys.argv[2]}: wall {float(sys.argv[4])-float(sys.argv[3]):.1f} s, best val_acc {(s.get(\"best\") or {}).get(\"val_acc\")}')" \
    "$out/$1.json" "$1 (--gpus-per-trial $2)" "$t0" "$t1"
}

export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
step "starting the MPS daemon"
nvidia-cuda-mps-control -d
python3 -c "import torch; torch.zeros(1, device='cuda'); print('CUDA under MPS: ok')"
step "1/3 concurrent trainings under MPS"
python3 benchmarks/gpu_share.py --device cuda --counts 1,8,16 --epochs 60 | tee "$out/share_mps.txt"
wait  # the libraries' compilation
step "2/3 default sweep at 1/16 GPU per trial, under MPS"
sweep mps-16 0.0625 | tee -a "$out/sweeps.txt"
echo quit | nvidia-cuda-mps-control
sleep 1
unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
step "3/3 the same sweep without MPS"
sweep plain-16 0.0625 | tee -a "$out/sweeps.txt"
