#!/usr/bin/env bash
# The GPU card in one device run (docs/BENCHMARKS.md, "GPU card"). First, here on the CPU machine:
#     .venv/bin/python benchmarks/gpu_card.py prepare   # -> .gpu/ (observations, 10 demos, gymnasium + pyzmq wheels)
# then one device call: command "bash benchmarks/gpu_card.sh", carry [".gpu"], timeout_s 540.
# Writes 8 files to $OUT (the device tool brings back at most 8). Each step has its own timeout and runs even if an
# earlier one failed.
set -u
OUT=${OUT:-$PWD/gpu_card_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}      # DEVICE=cpu CARD_ARGS="--presets tiny --train-presets tiny" tries it out on a CPU
CARD_ARGS=${CARD_ARGS:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ ! -f .gpu/lift_obs.npz ]; then echo "no .gpu/: run 'python benchmarks/gpu_card.py prepare' here and carry .gpu" >&2; exit 2; fi
if ls .gpu/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{ nvidia-smi; $PY -c "import torch, numpy, transformers; print('torch', torch.__version__, 'numpy', numpy.__version__, 'transformers', transformers.__version__)"; } \
  > "$OUT/env.txt" 2>&1
# 1. the Fast-dVLA decode table on the GPU: shipped teacher (parallel, parallel-cached) and student (block, pipelined...)
timeout 180 $PY benchmarks/decode.py --device "$DEVICE" --skip-success --threads 1 --start-blocks 4 --decode-steps 4 \
  --teacher Lift=vla/pretrained/lift_tiny --student Lift=vla/pretrained/lift_tiny_fast --obs Lift=.gpu/lift_obs.npz \
  --out "$OUT/decode_gpu.json" > "$OUT/decode_gpu.log" 2>&1
tail -12 "$OUT/decode_gpu.log"
# 2. per preset: pass cost by width, a parallel chunk, training steps
timeout 240 $PY benchmarks/gpu_card.py run --device "$DEVICE" $CARD_ARGS --data .gpu/demos.hdf5 --out "$OUT/gpu_card.json" > "$OUT/gpu_card.log" 2>&1
cat "$OUT/gpu_card.log"
# 3. the serving layer's transport on this machine (issue: transport p50 <= 0.5 ms)
timeout 90 $PY benchmarks/transport_idle.py --requests 200 --out "$OUT/transport_idle_gpu.json" > "$OUT/transport.log" 2>&1
cat "$OUT/transport.log"
# 4. a SmolVLM2-500M-shaped vision-language backbone (random weights from its config, no download; vla/vlm.py) against
# ours at the same decoder shape: parameters, a bf16 train step (batch 8), a chunk (parallel, K = 8), peak memory
timeout 240 $PY benchmarks/backbones.py --shape smolvlm-500m --kinds ours,smolvlm --device "$DEVICE" --skip-reload \
  --rounds 2 --train-steps 3 --requests 5 --out "$OUT/backbones_smolvlm500m.json" 2>&1 \
  | grep -v "Loading weights\|Writing model" | tail -5
