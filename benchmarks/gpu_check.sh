#!/usr/bin/env bash
# Every GPU measurement of the "make a GPU worth having" work, in one run, printed as one table.
#
#   benchmarks/gpu_check.sh            # from the repo root, on a machine with a CUDA GPU (< 6 min on an H100)
#   benchmarks/gpu_check.sh --smoke    # every step, tiny, on the CPU: checks the script itself (CI)
#
# On a lent GPU machine without Ray/Optuna/MLflow or internet, carry `.gpu-pack/` (made by
# ../shared/tools/gpu-pack): the script unpacks its data and libraries to /tmp/bp and uses them
# through PYTHONPATH. It measures:
#   1. the chapter's 100-epoch [512] run (book split), CUDA-graphed against eager steps;
#   2. benchmarks/loop_throughput.py --device cuda, graphed and eager;
#   3. 1/4/8/16 concurrent 20-epoch chapter trainings on the one GPU (benchmarks/gpu_share.py);
#   4. the default `birdplane sweep` at the default GPU share;
#   5. the same sweep at the share step 3 measured (1/N for the largest N at >= 0.8x solo speed).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda chapter_epochs=100 loop=(--epochs 4) share=(--counts 1,4,8,16 --epochs 20) sweep=()
if [ "${1:-}" = "--smoke" ]; then
  device=cpu chapter_epochs=2 loop=(--smoke-test) share=(--smoke-test) sweep=(--smoke)
fi
pack=/tmp/bp
if [ "$device" = cuda ] && [ -d .gpu-pack ]; then  # a lent GPU machine: the packed data and libraries (not for --smoke)
  [ -f .gpu-pack/data.tar.xz ] && [ ! -d $pack/cifar10 ] && mkdir -p $pack && tar -xJf .gpu-pack/data.tar.xz -C $pack
  [ -f .gpu-pack/site.tar.xz ] && [ ! -d $pack/site ] && mkdir -p $pack && tar -xJf .gpu-pack/site.tar.xz -C $pack
  export BIRDPLANE_DATA="${BIRDPLANE_DATA:-$pack/cifar10}" BIRDPLANE_CACHE="${BIRDPLANE_CACHE:-$pack/cache}"
  export PYTHONPATH="$pack/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -d $pack/site ] && [ ! -f $pack/site/.compiled ]; then
    # The unpacked libraries compile on first import (~60 s): now, beside steps 1-3, not inside the sweep's wall time.
    (python3 -m compileall -q -j 8 $pack/site >/dev/null 2>&1; touch $pack/site/.compiled) &
  fi
fi
out="${GPU_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$out"
step() { echo "[gpu_check $(date +%T)] $*" >&2; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" || true
step "1/5 chapter run, graphed and eager"
for graphs in auto off; do
  date +%s.%N > "$out/chapter_${graphs}_start.txt"
  python3 -m study.cli train --val-split book --device "$device" --graphs "$graphs" --epochs "$chapter_epochs" \
    --json > "$out/chapter_$graphs.json"
  date +%s.%N > "$out/chapter_${graphs}_end.txt"
done
step "2/5 loop throughput"
python3 benchmarks/loop_throughput.py --device "$device" "${loop[@]}" > "$out/loop_auto.txt"
python3 benchmarks/loop_throughput.py --device "$device" "${loop[@]}" --graphs off > "$out/loop_off.txt"
step "3/5 concurrent trainings"
python3 benchmarks/gpu_share.py --device "$device" "${share[@]}" > "$out/share.txt"
step "4/5 default sweep"
date +%s.%N > "$out/sweep_start.txt"
python3 -m study.cli sweep --name gpu-default --storage-path "$out/ray" --tracking-uri "sqlite:///$out/mlflow.db" \
  "${sweep[@]}" --json > "$out/sweep.json" 2> "$out/sweep.err"
date +%s.%N > "$out/sweep_end.txt"
share_arg=$(sed -n 's/.*--gpus-per-trial \([0-9.e-]*\)$/\1/p' "$out/share.txt" | tail -1)
[ "$device" = cpu ] && share_arg=0  # --smoke: no GPU to share
step "5/5 default sweep at the measured share (--gpus-per-trial ${share_arg:-?})"
date +%s.%N > "$out/sweep_share_start.txt"
python3 -m study.cli sweep --name gpu-share --storage-path "$out/ray" --tracking-uri "sqlite:///$out/mlflow.db" \
  --gpus-per-trial "${share_arg:-0.25}" "${sweep[@]}" --json > "$out/sweep_share.json" 2> "$out/sweep_share.err"
date +%s.%N > "$out/sweep_share_end.txt"

python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def wall(name):
    return float((out / f"{name}_end.txt").read_text()) - float((out / f"{name}_start.txt").read_text())
def last_json(name):
    for line in reversed((out / name).read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
g, e = last_json("chapter_auto.json"), last_json("chapter_off.json")
sweep, shared = last_json("sweep.json"), last_json("sweep_share.json")
rows = [
    ("GPU", (out / "gpu.txt").read_text().strip() or "?"),
    ("chapter [512], graphed (auto): training s", f"{g['seconds']:.2f} (val {g['val_acc']:.4f}, steps {g['steps']}; "
     f"process {wall('chapter_auto'):.1f} s)"),
    ("chapter [512], eager: training s", f"{e['seconds']:.2f} (val {e['val_acc']:.4f}; process "
     f"{wall('chapter_off'):.1f} s)"),
    ("graphed speed-up (eager / graphed)", f"{e['seconds'] / g['seconds']:.1f}x   (goal: graphed <= 3 s)"),
    ("default sweep: wall s", f"{wall('sweep'):.1f}   (goal <= 30 s); best val_acc "
     f"{(sweep.get('best') or {}).get('val_acc')}"),
    ("default sweep at the measured share: wall s", f"{wall('sweep_share'):.1f}; best val_acc "
     f"{(shared.get('best') or {}).get('val_acc')}"),
]
width = max(len(r[0]) for r in rows)
print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
for name in ("loop_auto.txt", "loop_off.txt", "share.txt"):
    print(f"\n--- {name}\n" + (out / name).read_text().strip())
print(f"\n(raw outputs in {out})")
PY
