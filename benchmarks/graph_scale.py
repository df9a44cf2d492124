"""The teacher stage's neighbour graph and kNN evaluation at scale: measured time and peak
memory on synthetic features, extrapolated to ImageNet-1k.

    PYTHONPATH=. python3 benchmarks/graph_scale.py [--sizes 20000x2048,50000x512] [--k 384]
        [--device cuda]

For each ``N x d`` (random L2-normalised float32 features) it builds the exact top-k graph
with :func:`orchestrator.engine.knn.save_neighbour_graph` (chunks of ``--chunk`` rows against
``--bank-chunk`` bank rows, written to an int32 ``.npy``) and runs the weighted kNN of
``N / 25.6`` queries against the N-row bank (ImageNet: 50 k val x 1.28 M train), each in a
fresh process whose peak resident memory (``ru_maxrss``) is reported above an idle process
that imported the same modules (on CUDA: and made its context; the features and every score
block are then on the GPU, whose peak allocation is reported too). The time splits into the
GEMM and the selection (top-k, ties, merge), each timed alone on one block (best of 3), as
``t = 2 N^2 d / gemm_rate + N^2 x select_s_per_score`` (the table shows how well that
predicts the measured total), and extrapolated to N = 1,281,167, d = 2048, k = 384 at the
measured rates (this CPU, or the GPU of ``--device cuda``) and, from spec FLOP/s and
bandwidth, on one H200. Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGENET_N = 1_281_167
IMAGENET_D = 2048
IMAGENET_QUERIES = 50_000
# One H200 SXM (NVIDIA datasheet): FP32 67 TFLOP/s (SIMT, the default: TF32 is off for
# matmul), TF32 tensor 494.7 TFLOP/s dense, HBM3e 4.8 TB/s.
H200 = {"fp32_tflops": 67.0, "tf32_tflops": 494.7, "hbm_tb_s": 4.8}
# Bytes the selection moves per score on a GPU (inferred from orchestrator/engine/knn.py:
# write the fp32 score, top-k's radix passes over 32-bit keys (~4 reads), the > and ==
# masks, their row sums, the kept mask and its nonzero scan): about 40 bytes.
SELECT_BYTES_PER_SCORE = 40.0


def _child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import torch
    import torch.nn.functional as F

    from orchestrator.engine.knn import _block_topk, save_neighbour_graph, weighted_knn

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"

    def sync() -> None:  # a GPU's queued work done before the clock is read
        if on_cuda:
            torch.cuda.synchronize(device)

    n, d = args.n, args.d
    if n == 0:  # the idle baseline: same imports (and CUDA context), nothing computed
        torch.zeros(1, device=device)
        print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                          / 1024}))
        return
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(n, d, generator=gen), dim=1).to(device)
    out: dict[str, Any] = {"n": n, "d": d}
    if args.what == "graph":
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            started = time.perf_counter()
            path = save_neighbour_graph(Path(tmp) / "g.npy", feats, args.k, args.chunk,
                                        args.bank_chunk)
            sync()
            out["graph_s"] = time.perf_counter() - started
            out["graph_file_mb"] = path.stat().st_size / 2**20
        # The two parts on their own, each the best of 3 (the machine may be shared): the
        # GEMM of one block (chunk x bank chunk) and the selection on that block's scores.
        rows, cols = min(args.chunk, n), min(args.bank_chunk, n)
        block = feats[:rows]
        gemm, select = [], []
        for _ in range(3):
            sync()
            started = time.perf_counter()
            sims = block @ feats[:cols].T
            sync()
            gemm.append(time.perf_counter() - started)
            started = time.perf_counter()
            _block_topk(sims, min(args.k, cols))
            sync()
            select.append(time.perf_counter() - started)
        out["gemm_gflops"] = 2.0 * rows * cols * d / min(gemm) / 1e9
        out["select_ns_per_score"] = min(select) / (rows * cols) * 1e9
    else:
        queries = max(1, round(n / (IMAGENET_N / IMAGENET_QUERIES)))
        labels = torch.randint(0, 1000, (n,), generator=gen).to(device)
        q = F.normalize(torch.randn(queries, d, generator=gen), dim=1).to(device)
        truth = torch.randint(0, 1000, (queries,), generator=gen).to(device)
        sync()
        started = time.perf_counter()
        weighted_knn(feats, labels, q, truth, [10], 0.07, 1000, bank_chunk=args.bank_chunk)
        sync()
        out["knn_s"] = time.perf_counter() - started
        out["queries"] = queries
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if on_cuda:
        out["device_name"] = torch.cuda.get_device_name(device)
        out["device_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    out["features_mb"] = n * d * 4 / 2**20
    print(json.dumps(out))


def _run(args: argparse.Namespace, what: str, n: int, d: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--what", what, "--n", str(n), "--d", str(d),
           "--k", str(args.k), "--chunk", str(args.chunk), "--bank-chunk",
           str(args.bank_chunk), "--threads", str(args.threads), "--device", args.device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # the child's own error, not only its exit status
        raise SystemExit(f"graph_scale: the {what} run at {n} x {d} failed "
                         f"(exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000x2048,50000x512")
    parser.add_argument("--k", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--bank-chunk", type=int, default=65536)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu",
                        help="where the features and score blocks live (cuda: one GPU)")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--what", default="graph")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--d", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    import platform

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    idle = _run(args, "graph", 0, 0)["maxrss_mb"]
    rows = []
    on_cuda = args.device.startswith("cuda")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} torch thread(s), device {args.device}; k={args.k}, chunk "
          f"{args.chunk} x bank chunk {args.bank_chunk}; idle process {idle:.0f} MB")
    print(f"{'N':>8} {'d':>5} {'graph s':>9} {'model s':>8} {'GFLOP/s':>8} {'select ns/score':>16}"
          f" {'peak MB':>8} {'feat MB':>8} {'kNN s':>7} {'kNN peak MB':>11}"
          + (f" {'GPU peak MB':>11}" if on_cuda else ""))
    for n, d in sizes:
        g = _run(args, "graph", n, d)
        kn = _run(args, "knn", n, d)
        g["model_s"] = (2.0 * n * n * d / (g["gemm_gflops"] * 1e9)
                        + n * n * g["select_ns_per_score"] * 1e-9)
        g["peak_mb_over_idle"] = g["maxrss_mb"] - idle
        g["knn_s"] = kn["knn_s"]
        g["knn_queries"] = kn["queries"]
        g["knn_peak_mb_over_idle"] = kn["maxrss_mb"] - idle
        rows.append(g)
        print(f"{n:>8} {d:>5} {g['graph_s']:>9.1f} {g['model_s']:>8.1f} {g['gemm_gflops']:>8.1f} "
              f"{g['select_ns_per_score']:>16.2f} {g['peak_mb_over_idle']:>8.0f} "
              f"{g['features_mb']:>8.0f} {g['knn_s']:>7.1f} {g['knn_peak_mb_over_idle']:>11.0f}"
              + (f" {max(g['device_peak_mb'], kn['device_peak_mb']):>11.0f}" if on_cuda else ""))
        sys.stdout.flush()

    # Extrapolation: the largest measured run's rates (closest to the asymptote).
    ref = max(rows, key=lambda r: r["n"] * r["n"] * r["d"])
    gemm_rate = ref["gemm_gflops"] * 1e9
    select = ref["select_ns_per_score"]
    n, d, q = IMAGENET_N, IMAGENET_D, IMAGENET_QUERIES
    graph_flops, graph_scores = 2.0 * n * n * d, float(n) * n
    knn_flops, knn_scores = 2.0 * q * n * d, float(q) * n
    chunk_scores_mb = args.chunk * args.bank_chunk * 4 / 2**20
    measured: dict[str, Any] = {
        "device": ref.get("device_name", "cpu"),
        "graph_h": (graph_flops / gemm_rate + graph_scores * select * 1e-9) / 3600,
        "knn_h": (knn_flops / gemm_rate + knn_scores * select * 1e-9) / 3600,
        "cores_assumed": args.threads,
    }
    if ref["d"] == d:  # the measured total (block overheads too) scaled by N^2 at this d
        measured["graph_h_scaled"] = ref["graph_s"] * (n / ref["n"]) ** 2 / 3600
    gpu: dict[str, float] = {}
    for precision in ("fp32", "tf32"):
        gemm_s = graph_flops / (H200[f"{precision}_tflops"] * 1e12)
        gpu[f"graph_gemm_s_{precision}"] = gemm_s
    select_s = graph_scores * SELECT_BYTES_PER_SCORE / (H200["hbm_tb_s"] * 1e12)
    gpu["graph_select_s"] = select_s
    gpu["graph_s_fp32"] = gpu["graph_gemm_s_fp32"] + select_s
    gpu["knn_s_fp32"] = (knn_flops / (H200["fp32_tflops"] * 1e12)
                         + knn_scores * SELECT_BYTES_PER_SCORE / (H200["hbm_tb_s"] * 1e12))
    memory = {
        "features_gb": n * d * 4 / 1e9,
        "graph_file_gb": n * args.k * 4 / 1e9,
        "working_scores_mb": chunk_scores_mb,
        "host_rows_mb": args.chunk * args.k * 4 / 2**20,
    }
    print(f"\nImageNet-1k (N = {n:,}, d = {d}, k = {args.k}; kNN {q:,} queries):")
    where = (f"this GPU ({measured['device']})" if on_cuda
             else f"this CPU, {args.threads} thread(s)")
    scaled = (f"; the measured total scaled by N^2: {measured['graph_h_scaled']:.2f} h"
              if "graph_h_scaled" in measured else "")
    print(f"  {where}: graph {measured['graph_h']:.2f} h, kNN {measured['knn_h'] * 60:.1f} min "
          f"(GEMM at {gemm_rate / 1e9:.0f} GFLOP/s, selection {select:.2f} ns/score){scaled}")
    print(f"  one H200 (spec rates): graph {gpu['graph_s_fp32']:.0f} s in fp32 (GEMM "
          f"{gpu['graph_gemm_s_fp32']:.0f} s, TF32 would be {gpu['graph_gemm_s_tf32']:.0f} s; "
          f"selection ~{select_s:.0f} s at {SELECT_BYTES_PER_SCORE:.0f} B/score), kNN "
          f"{gpu['knn_s_fp32']:.1f} s")
    print(f"  memory: features {memory['features_gb']:.1f} GB (fp32, on the stage's device), "
          f"graph file {memory['graph_file_gb']:.2f} GB int32 (memory-mapped, shared), "
          f"scores {chunk_scores_mb:.0f} MB a block (x ~3 with masks), host rows "
          f"{memory['host_rows_mb']:.1f} MB a chunk")
    print(json.dumps({"measured": rows, "imagenet_at_measured_rates": measured,
                      "imagenet_h200": gpu,
                      "imagenet_memory": memory, "k": args.k, "chunk": args.chunk,
                      "bank_chunk": args.bank_chunk}))


if __name__ == "__main__":
    main()
