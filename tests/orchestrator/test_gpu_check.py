"""benchmarks/gpu_check.py in its CI mode (``--device cpu --quick``), as a bare GPU machine runs
it: a subprocess with the working tree on PYTHONPATH and Ray, MLflow, pydantic, typer and
PyYAML made unimportable; its last line is one JSON object with every verdict and figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("ray", "mlflow", "pydantic", "typer", "yaml")
# None in sys.modules makes `import name` (and `import name.sub`) raise ImportError.
RUN_BLOCKED = (
    "import runpy, sys\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['benchmarks/gpu_check.py', '--device', 'cpu', '--quick', '--threads', '1']\n"
    "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n"
)


def test_quick_mode_runs_without_the_sweep_stack_and_reports_every_verdict() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", RUN_BLOCKED], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["verdicts"] == {"memory_cap": "n/a", "fused_group": "pass",
                                  "stacked": "pass", "non_finite": "pass",
                                  "gpu_decode": "n/a", "augment_devices": "n/a",
                                  "stream_ahead": "n/a", "compile": "n/a"}
    assert result["ok"] is True and result["device"] == "cpu" and result["quick"] is True
    checks = result["checks"]
    assert checks["fused_group"]["max_rel_diff"] == 0.0  # the group level on CPU: bit for bit
    for level in ("group", "stack"):
        failures = checks["non_finite"][level]["failures"]
        assert sorted(f is None for f in failures.values()) == [False, False, True]
        assert all(f.startswith("epoch 2: non-finite loss") for f in failures.values() if f)
    pipeline = result["figures"]["data_pipeline"]
    assert pipeline["decode_crop_cpu_images_per_s"] > 0 and pipeline["augment_images_per_s"] > 0
    pair = result["figures"]["trial_throughput"]["pairs"]["resnet20->resnet8x4"]
    assert {"seeds_style", "ukd_single", "ukd_fused"} <= set(pair)
    assert all(v > 0 for v in [pair["seeds_style"], pair["ukd_single"],
                               *pair["ukd_fused"].values()])
    details = result["figures"]["trial_throughput"]["details"]["pairs"]["resnet20->resnet8x4"]
    assert details["tflops"]["1"] > 0
