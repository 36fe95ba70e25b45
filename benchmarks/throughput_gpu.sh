#!/usr/bin/env bash
# Throughput on one GPU (issue 43), under 5 minutes on an H100: a dense 64 x 1024 x 1024 uint16 phantom at
# dz/dx 2 (134 Mvoxel out), the default region (sized from memory), compiled bf16 network per --compile auto.
# Appends rows to benchmarks/results/throughput.json / .md. Usage: bash benchmarks/throughput_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
work="${TMPDIR:-/tmp}/ssai3d-throughput-gpu"
python benchmarks/throughput.py --shape 64,1024,1024 --z-factor 2 --device cuda --threads "$(nproc)" \
    --work "$work" --label "gpu, default region"
python benchmarks/throughput.py --shape 64,1024,1024 --z-factor 2 --device cuda --threads "$(nproc)" \
    --work "$work" --region 128,256,256 --label "gpu, region 128x256x256 (the former default)"
