"""experiments/benchmarks/mjx_bridge.py runs and writes its JSON and table (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_mjx_bridge_benchmark_smoke(tmp_path):
    out = tmp_path / "mjx_bridge.json"
    script = ROOT / "experiments" / "benchmarks" / "mjx_bridge.py"
    env = {**os.environ, "FLOWRL_JAX_CACHE": str(ROOT / ".pytest_cache" / "jax")}
    args = ["--task", "InvertedPendulum", "--sizes", "8", "--env-steps", "16"]
    args += ["--gym-env-steps", "16", "--min-steps", "2", "--repeats", "1", "--async-max", "0"]
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    (row,) = result["sizes"]
    assert row["n"] == 8
    rates = row["env_steps_per_s"]
    assert set(rates) == {"raw", "bridge_torch", "bridge_torch_numpy", "bridge_vecenv", "gym_sync"}
    assert all(v > 0 for v in rates.values())
    assert "| 8 |" in out.with_suffix(".md").read_text()
