"""Smoke tests of the benchmark scripts: they run and write what they promise.

Smoke tests only: they never assert on speed or memory.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmarks" / "throughput.py"
JVP_SCRIPT = ROOT / "experiments" / "benchmarks" / "jvp_attention.py"
LEARNERS = ("reinflow", "ppo")


def run_script(script: Path, *args: str, timeout: int, env: dict | None = None):
    """Run a benchmark script from the repository root; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_throughput_quick_writes_json_and_table(tmp_path):
    out = tmp_path / "throughput.json"
    # --check-threads 1 runs the thread-check code path without oversubscribing the
    # (possibly busy) CI cores, which can make a 2-thread run crawl.
    proc = run_script(SCRIPT, "--quick", "--check-threads", "1", "--out", str(out), timeout=120)
    result = json.loads(out.read_text())

    for key in (
        "machine",
        "code",
        "settings",
        "matched",
        "differs",
        "parameters",
        "runs",
        "median",
        "ratio_reinflow_over_ppo",
        "time_breakdown",
        "thread_check",
    ):
        assert key in result, key
    machine = result["machine"]
    for key in (
        "platform",
        "cpu_count",
        "torch_cpu_capability",
        "torch",
        "stable_baselines3",
        "gymnasium",
    ):
        assert key in machine, key
    assert machine["torch_threads"] == 1
    assert result["thread_check"]["threads"] == 1
    settings = result["settings"]
    assert settings["quick"] is True
    assert settings["total_timesteps"] == 2 * settings["n_envs"] * settings["n_steps"]

    for name in LEARNERS:
        runs = result["runs"][name]
        assert len(runs) == settings["repeats"]
        for run in runs:
            assert run["steps"] == settings["total_timesteps"]
            assert run["fps"] > 0
            assert run["rollout_s"] > 0 and run["train_s"] > 0
            assert run["gradient_steps"] > 0
        assert result["median"][name]["fps"] > 0
        shares = result["time_breakdown"][name]
        assert set(shares) == {"rollout_env_step", "rollout_policy_and_buffer", "train", "other"}
        assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
        assert result["thread_check"]["median"][name]["fps"] > 0
        assert len(result["thread_check"]["runs"][name]) == 1
    ratio = result["ratio_reinflow_over_ppo"]
    assert ratio > 0
    assert math.isclose(ratio, result["median"]["reinflow"]["fps"] / result["median"]["ppo"]["fps"])

    table = (tmp_path / "throughput.md").read_text()
    assert "| reinflow |" in table and "| ppo |" in table
    assert "ratio reinflow_fps / ppo_fps" in proc.stdout


def test_jvp_attention_quick_writes_json_and_table(tmp_path):
    out = tmp_path / "jvp.json"
    run_script(JVP_SCRIPT, "--quick", "--device", "cpu", "--out", str(out), timeout=300)
    result = json.loads(out.read_text())
    for key in ("machine", "code", "settings", "rows", "command"):
        assert key in result, key
    settings = result["settings"]
    assert settings["n"] == [64, 128] and settings["peer"] == "naive"
    rows = result["rows"]
    assert {(r["method"], r["n"]) for r in rows} == {
        (m, n) for m in ("naive", "blockwise", "blockwise_fused") for n in (64, 128)
    }
    for row in rows:
        assert len(row["times_s"]) == settings["repeats"] and row["time_s"] > 0
        assert row["peak_bytes"] >= 0
        if row["method"] == "naive":
            assert row["time_vs_naive"] == 1.0 and row["memory_vs_naive"] == 1.0
    table = (tmp_path / "jvp.md").read_text()
    assert "| 128 | blockwise |" in table


def test_update_time_quick_writes_json_and_table(tmp_path):
    out = tmp_path / "update_time.json"
    script = ROOT / "experiments" / "benchmarks" / "update_time.py"
    run_script(script, "--quick", "--out", str(out), timeout=300)
    result = json.loads(out.read_text())
    flow = {"reinflow", "policyflow", "fpo", "fpo_pp", "dppo"}
    assert set(result["learners"]) == flow | {"ppo", "sac"}
    for name in flow:  # matched settings: 2 rollouts, 2 epochs of 2 minibatches, as PPO
        assert result["learners"][name]["gradient_steps"] == 8, name
    assert result["learners"]["dppo"]["update_ratio_to_dppo"] == 1.0
    for learner in result["learners"].values():
        assert learner["gradient_steps"] > 0 and learner["update_calls"] > 0
        assert 0 < learner["update_s"] <= learner["wall_s"]
    # On-policy: 2 rollouts of 64 steps, 2 epochs of 2 minibatches each; SAC: 1 per env step.
    assert result["learners"]["ppo"]["gradient_steps"] == 8
    assert result["learners"]["sac"]["gradient_steps"] == 128
    assert "| reinflow |" in out.with_suffix(".md").read_text()


@pytest.mark.mjx
def test_mjx_bridge_writes_json_and_table(tmp_path):
    reason = 'needs the mjx extra: pip install "flowrl-policies[mjx]"'
    pytest.importorskip("jax", reason=reason)
    pytest.importorskip("mujoco.mjx", reason=reason)
    out = tmp_path / "mjx_bridge.json"
    script = ROOT / "experiments" / "benchmarks" / "mjx_bridge.py"
    # The MJX tests' compile cache: the bridge's (InvertedPendulum, 8 envs) is already in it.
    env = {**os.environ, "FLOWRL_JAX_CACHE": str(ROOT / ".pytest_cache" / "jax")}
    args = ["--task", "InvertedPendulum", "--sizes", "8", "--env-steps", "16"]
    args += ["--gym-env-steps", "16", "--min-steps", "2", "--repeats", "1", "--async-max", "0"]
    run_script(script, *args, "--out", str(out), timeout=600, env=env)
    result = json.loads(out.read_text())
    (row,) = result["sizes"]
    assert row["n"] == 8
    rates = row["env_steps_per_s"]
    assert set(rates) == {"raw", "bridge_torch", "bridge_torch_numpy", "bridge_vecenv", "gym_sync"}
    assert all(v > 0 for v in rates.values())
    assert "| 8 |" in out.with_suffix(".md").read_text()


def test_flowsac_throughput_quick_writes_json_and_table(tmp_path):
    out = tmp_path / "flowsac_throughput.json"
    script = ROOT / "experiments" / "benchmarks" / "flowsac_throughput.py"
    run_script(script, "--quick", "--gated", "--out", str(out), timeout=300)
    result = json.loads(out.read_text())
    assert set(result["learners"]) == {"sac", "flowsac", "flowsac_gated"}
    assert result["ratio_flowsac_over_sac"] > 0
    for row in result["learners"].values():
        assert row["env_steps"] == 64 and row["update_s"] > 0
        assert set(row["breakdown"]) >= {"actor_sample_forward_ms", "gradient_step_ms"}
    assert "| flowsac |" in out.with_suffix(".md").read_text()
