#!/usr/bin/env bash
# `avn bench` on a GPU machine: the same figures as on CPU (torchserve, in-process and naive; p50,
# p95, p99, single-client p50, cache-hit p99, per-step and per-transfer-syntax means, peak RSS, the
# overhead of TorchServe over in-process and decode's share), with every configuration's models on
# the GPU (`--device cuda`: the in-process backend loads them there; TorchServe gives each worker a
# GPU and its handlers load there). Decoding stays on the CPU, as in production.
#
# It stops with exit code 2 and a one-line reason when there is no GPU (no nvidia-smi, no device
# listed, or a PyTorch that sees no CUDA device).
#
# Settings (environment):
#   PYTHON        the project's Python (default: python; its bin/ must hold torchserve)
#   STORE         a trained model store to bench instead of the timing store (default: none)
#   TIMING_STORE  where the untrained paper-shaped store is built (default: model_store_timing)
#   DATA          the data set sent (default: data/demo; built as 20 phantom subjects when missing)
#   N, C          radiographs per configuration and concurrent clients (default: 200, 8)
#   CONFIGS       configurations (default: torchserve,in-process,naive)
#   OUT           the JSON written (default: bench-gpu.json)
#
#   scripts/gpu_bench.sh                      # timing store, 200 radiographs, 8 clients
#   N=40 C=4 OUT=/tmp/b.json scripts/gpu_bench.sh
set -euo pipefail

PYTHON=${PYTHON:-python}
TIMING_STORE=${TIMING_STORE:-model_store_timing}
DATA=${DATA:-data/demo}
N=${N:-200}
C=${C:-8}
CONFIGS=${CONFIGS:-torchserve,in-process,naive}
OUT=${OUT:-bench-gpu.json}

no_gpu() {
    echo "gpu_bench.sh: no GPU: $1. Run \`avn bench\` (CPU) instead." >&2
    exit 2
}

command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi is not installed"
nvidia-smi -L >/dev/null 2>&1 || no_gpu "nvidia-smi lists no device"
"$PYTHON" - <<'EOF' || no_gpu "PyTorch sees no CUDA device (a CPU-only build, or CUDA_VISIBLE_DEVICES empty)"
import sys
import torch

sys.exit(0 if torch.cuda.is_available() else 1)
EOF

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))'

if [[ ! -f "$DATA/annotations.json" ]]; then
    echo "no data set in $DATA: building 20 phantom subjects (full-size DICOM)"
    "$PYTHON" -m avn.cli phantom --out "$DATA" --subjects 20 --format dicom
fi

if [[ -n "${STORE:-}" ]]; then
    store_option=(--store "$STORE")
else
    store_option=(--timing-store "$TIMING_STORE")
fi

exec "$PYTHON" -m avn.cli bench "${store_option[@]}" --data "$DATA" -n "$N" -c "$C" \
    --configurations "$CONFIGS" --device cuda --json "$OUT"
