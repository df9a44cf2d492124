#!/usr/bin/env bash
# The GPU session's one prepared run (its three steps stop at 150, 300 and 120 s: 570 s in
# all, under the device tool's 600 s a command; torch and torchvision only, no Ray or
# MLflow): the data path's GPU checks, the data pipeline's figures, then the neighbour graph
# and kNN on the GPU (issue 18's ImageNet-1k time and memory, measured there).
# Logs go to $OUT (the device tool's folder that comes back), else /tmp/ukd-device.
#   bash scripts/device_run.sh            # WORKERS=12 by default (16-core machine)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ukd-device}
mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
# nvJPEG against libjpeg-turbo, the GPU crops and photometric half against the CPU's, and the
# finisher thread's batches against those made when read.
timeout 150 python3 benchmarks/gpu_check.py --only gpu_decode augment_devices stream_ahead \
    2>&1 | grep -v -i warn | tee "$out/check.log"
# (a) and (b) per core, (c) the GPU route at batch 256 and 1,024 both ways and the CPU route
# on the GPU, (d) op counts, (e) with a ResNet-18 step; the profile of (c) at 1,024.
OMP_NUM_THREADS=1 timeout 300 python3 -m benchmarks.data_throughput --images 1024 \
    --workers "${WORKERS:-12}" --epochs 2 --gpu-batch 256 1024 --profile \
    --dir /tmp/ukd-data-throughput 2>&1 | grep -v -i warn | tee "$out/data_throughput.log"
# The exact top-384 graph and the 1/25.6-query kNN of 65,536 and 262,144 random 2,048-d
# features on the GPU (the stage's chunks: 1,024 rows x 65,536 bank rows), extrapolated to
# ImageNet-1k at the measured rates; 8 threads only to generate the features.
timeout 120 python3 benchmarks/graph_scale.py --device cuda --threads 8 \
    --sizes 65536x2048,262144x2048 2>&1 | grep -v -i warn | tee "$out/graph_scale.log"
