#!/usr/bin/env bash
# The CPU benchmark's recipe at a larger size on one GPU (preset small-gpu: a Qwen2.5-VL of
# text 8 x 512 and vision 8 x 384, built from config; the GPU machine cannot download weights).
#
# The GPU machine has torch/transformers/peft/accelerate/pyarrow/pandas but no trl, datasets
# or SimpleITK, so the data is rendered here and travels as JSONL + PNG with the wheels.
#
# Step 1, on the development machine, in the repository root:
#   bash benchmarks/bench_vlm_gpu.sh prepare
# Step 2, on the GPU machine (device run, carry [".vlmgpu"]), in the repository root:
#   bash benchmarks/bench_vlm_gpu.sh run "$OUT"          # SFT vs SFT + GRPO (bench_vlm.py)
#   bash benchmarks/bench_vlm_gpu.sh grounding "$OUT" 480
# `grounding` runs the issue-13 arms (bench_grounding.py: sft, sft_cont, grpo_preset, grpo_iou;
# 3 seeds side by side, 4 processes per seed) within the given seconds, then packs what finished
# (metrics, predictions, validation curves, logs; no weights) into OUT/grounding_runs.tgz.
# Unpack it in runs/ here and run the same bench_grounding command to rebuild the tables.
set -euo pipefail
step=${1:?usage: bench_vlm_gpu.sh prepare | run OUT_DIR}
here=.vlmgpu

if [ "$step" = prepare ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.vlmgpu/' "$exclude" 2>/dev/null || echo '/.vlmgpu/' >> "$exclude"
  PY=${PY:-python}
  PYTHONPATH=src HF_HUB_OFFLINE=1 "$PY" -m medrl.cli vlm data --config small-gpu --seed 0 \
    --out "$here/data" --quiet
  rm -rf "$here/data/hf"   # the JSONL + PNG copy travels; training reads it into a Dataset
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$here/whl" \
    trl==1.16.0 datasets==5.2.0 dill==0.4.0 multiprocess==0.70.18
  du -sh "$here"
elif [ "$step" = run ]; then
  out=${2:?run needs the output folder}
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$here"/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  # datasets 5.2 wants pyarrow >= 24: if the machine's is older, carry a pyarrow wheel too
  python3 -c "import pyarrow, transformers, torch; print('pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 benchmarks/bench_vlm.py --config small-gpu --seeds 0 1 2 --parallel 1 \
    --out /tmp/bench_vlm_gpu --data "$here/data" 2>&1 | tail -40
  cp /tmp/bench_vlm_gpu/results.md /tmp/bench_vlm_gpu/results.json "$out"/
  cp /tmp/bench_vlm_gpu/seed0/log.txt "$out"/seed0_log.txt
elif [ "$step" = grounding ]; then
  out=${2:?grounding needs the output folder}
  budget=${3:-480}
  data=${DATA:-$PWD/$here/data}
  if ! python3 -c "import trl, datasets" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$here"/whl/*.whl
  fi
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  python3 -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'cuda', torch.cuda.is_available())" | tee "$out/versions.txt"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$out/versions.txt" 2>&1 || true
  runs=/tmp/bench_grounding_gpu
  mkdir -p "$runs"
  ln -sfn "$data" "$runs/data"
  set +e
  timeout "$budget" python3 -m benchmarks.bench_grounding --config small-gpu \
    --arms sft sft_cont grpo_preset grpo_iou --parallel 3 --jobs 4 --out "$runs" \
    --set threads=1 ${BENCH_ARGS:-} > "$out/bench.log" 2>&1
  echo "bench_grounding exit $?" >> "$out/bench.log"
  pkill -f 'medrl.cli vlm' ; sleep 2   # the arms still running when the budget ran out
  set -e
  tar czf "$out/grounding_runs.tgz" -C "$runs" --exclude=data --exclude='*.safetensors' \
    --exclude='checkpoint-*' --exclude='*.pt' --exclude='*.bin' --exclude='events.out.*' .
  ls -la "$out"
else
  echo "unknown step $step" >&2
  exit 2
fi
