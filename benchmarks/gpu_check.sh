#!/usr/bin/env bash
# The GPU paths, for a machine with CUDA: one model copy per Ray Data GPU actor, two replicas on one GPU (num_gpus=0.5),
# pipeline stages on their own CUDA streams, ORT's CUDA execution provider, bf16 training.
# Prints where every actor ran (-s) and one line per test (-rA). About 1-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
$PY -c 'import torch, onnxruntime as ort; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "ort", ort.get_available_providers())'
PYTHONPATH=$PWD $PY -m pytest tests/test_scale_gpu.py tests/test_gpu.py -m gpu -q -rA -s -p no:cacheprovider
