#!/usr/bin/env bash
#SBATCH --job-name=ukd-sweep
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --gpus-per-node=4
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@300
#SBATCH --output=ukd-%j.log
#
# A ukd sweep on a Slurm allocation (docs/CLUSTER.md): a Ray head on the first node, one Ray
# worker per other node, then `ukd sweep --address` on the first node (where this script
# runs). Submit from the ukd checkout, with the spec, the output directory and the spec's
# cache_dir on a filesystem every node mounts at the same path:
#
#   sbatch scripts/slurm_sweep.sh experiments/cifar.yaml /shared/runs/cifar [MLFLOW_URI]
#
# Submitting it again continues the sweep. Five minutes before the time limit Slurm sends
# SIGTERM (--signal above): ukd stops like Ctrl+C, marks the unfinished runs KILLED, exits 130.
# Adjust the #SBATCH lines to the partition (drop --gpus-per-node on CPU nodes); ukd runs
# resources.gpu-sized trials on whatever GPUs Ray finds on each node.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: sbatch $0 SPEC OUTPUT_DIR [MLFLOW_TRACKING_URI]" >&2; exit 2; }
spec=$1
output=$2
tracking=${3:-}
checkout=${SLURM_SUBMIT_DIR:-$(pwd)}  # sbatch runs a copy of this script: not $0's folder
export PATH="${UKD_VENV:-$checkout/.venv}/bin:$PATH"  # the same environment on every node

# One token for the job's cluster and its driver: srun hands the environment to every node.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN=${RAY_AUTH_TOKEN:-$(python -c 'import secrets; print(secrets.token_hex(32))')}
export RAY_USAGE_STATS_ENABLED=0

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 --nodelist="$head" hostname --ip-address | awk '{print $1}')
address=$head_ip:6379
cpus=${SLURM_CPUS_PER_TASK:-1}
gpus=${SLURM_GPUS_ON_NODE:-0}

srun --nodes=1 --ntasks=1 --nodelist="$head" \
    ray start --head --block --port=6379 --node-ip-address="$head_ip" \
    --num-cpus="$cpus" --num-gpus="$gpus" --include-dashboard=false &
bash "$checkout/scripts/ray_wait_nodes.sh" "$address" 1
workers=$(( ${#nodes[@]} - 1 ))
if [ "$workers" -gt 0 ]; then
    srun --nodes="$workers" --ntasks="$workers" --exclude="$head" \
        ray start --address="$address" --block --num-cpus="$cpus" --num-gpus="$gpus" &
fi
# Every node joins before the sweep starts: its shared-storage check covers them all.
bash "$checkout/scripts/ray_wait_nodes.sh" "$address" "${#nodes[@]}" 600

args=(sweep "$spec" --address "$address" --output "$output")
if [ -n "$tracking" ]; then
    args+=(--tracking-uri "$tracking")
fi
ukd "${args[@]}" &
ukd_pid=$!
trap 'kill -TERM "$ukd_pid" 2>/dev/null || true' TERM  # the time limit is near: stop cleanly
rc=0
wait "$ukd_pid" || rc=$?
if kill -0 "$ukd_pid" 2>/dev/null; then  # the trap interrupted the wait: ukd is stopping
    rc=0
    wait "$ukd_pid" || rc=$?
fi
exit "$rc"  # the Ray nodes end with the job's steps
