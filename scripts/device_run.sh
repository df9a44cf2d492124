#!/usr/bin/env bash
# The GPU session's one prepared run (its two steps stop at 3 and 6 minutes; torch and
# torchvision only, no Ray or MLflow): the data path's GPU checks, then the data pipeline's
# figures.
# Logs go to $OUT (the device tool's folder that comes back), else /tmp/ukd-device.
#   bash scripts/device_run.sh            # WORKERS=12 by default (16-core machine)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ukd-device}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
# nvJPEG against libjpeg-turbo, the GPU crops and photometric half against the CPU's, and the
# finisher thread's batches against those made when read.
timeout 180 python3 benchmarks/gpu_check.py --only gpu_decode augment_devices stream_ahead \
    2>&1 | grep -v -i warn | tee "$out/check.log"
# (a) and (b) per core, (c) the GPU route at batch 256 and 1,024 both ways and the CPU route
# on the GPU, (d) op counts, (e) with a ResNet-18 step; the profile of (c) at 1,024.
OMP_NUM_THREADS=1 timeout 360 python3 -m benchmarks.data_throughput --images 1024 \
    --workers "${WORKERS:-12}" --epochs 2 --gpu-batch 256 1024 --profile \
    --dir /tmp/ukd-data-throughput 2>&1 | grep -v -i warn | tee "$out/data_throughput.log"
