#!/usr/bin/env bash
# On a CUDA machine: the CUDA-marked tests, the GPU's GEMM limits, synthesis and training rates
# against them, synthesis compiled against eager, a short CIFAR-sized study, and the training step
# compiled against eager; see benchmarks/gpu.py. Arguments go to gpu.py
# (--rehearse: every step on the CPU at toy sizes, to check the script before a GPU run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu.py "$@"
