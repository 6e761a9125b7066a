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
    learners = ("reinflow", "policyflow", "ppo")
    run_script(SCRIPT, "--quick", "--learners", ",".join(learners), "--out", str(out), timeout=300)
    result = json.loads(out.read_text())
    for key in ("machine", "code", "settings", "matched", "differs", "repeats", "command"):
        assert key in result, key
    machine = result["machine"]
    for key in ("platform", "cpu_count", "torch_cpu_capability", "torch", "stable_baselines3"):
        assert key in machine, key
    assert machine["torch_threads"] == 1
    assert result["quick"] is True
    assert set(result["settings"]) == {"stress", "recipe"}
    for block in result["settings"].values():
        values = block["values"]
        assert values["total_timesteps"] == 2 * values["n_envs"] * values["n_steps"]
        for name in learners:
            runs = block["runs"][name]
            assert len(runs) == result["repeats"]
            for run in runs:
                assert run["steps"] == values["total_timesteps"]
                assert run["fps"] > 0 and run["rollout_s"] > 0 and run["train_s"] > 0
                assert run["gradient_steps"] > 0
            shares = block["time_breakdown"][name]
            assert set(shares) == {
                "rollout_env_step",
                "rollout_policy_and_buffer",
                "train",
                "other",
            }
            assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-6)
        median = block["median"]
        for name in ("reinflow", "policyflow"):
            ratio = block["ratio_over_ppo"][name]["wall"]
            assert math.isclose(ratio, median[name]["fps"] / median["ppo"]["fps"])
    table = (tmp_path / "throughput.md").read_text()
    assert "| reinflow |" in table and "| policyflow |" in table and "| ppo |" in table


def test_throughput_changes_table(tmp_path):
    # Two code versions in the new and the old (single-setting) JSON layouts.
    new = {"settings": {"stress": {"values": {}, "median": _medians(300, 600)}}}
    old = {"settings": {"n_envs": 4}, "median": _medians(150, 600)}
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    labels = [
        {"label": "before", "commit": "aaa", "files": {"stress": "old.json"}},
        {"label": "after", "commit": "bbb", "files": {"stress": "new.json"}},
    ]
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    proc = run_script(SCRIPT, "--changes", str(tmp_path), timeout=60)
    assert "| before (aaa) | stress | 150 | 600 | 0.250 |" in proc.stdout
    assert "| after (bbb) | stress | 300 | 600 | 0.500 |" in proc.stdout
    assert (tmp_path / "changes.md").read_text() in proc.stdout


def _medians(reinflow_fps: float, ppo_fps: float) -> dict:
    row = {"rollout_policy_and_buffer_s": 1.0, "train_s": 2.0}
    return {"reinflow": {**row, "fps": reinflow_fps}, "ppo": {**row, "fps": ppo_fps}}


def test_time_to_return_smoke(tmp_path):
    script = ROOT / "experiments" / "benchmarks" / "time_to_return.py"
    runs = tmp_path / "runs"
    tiny = ["--max-steps", "2048", "--eval-every", "2048", "--eval-episodes", "1"]
    for learner in ("reinflow", "ppo"):
        run_script(
            script, "run", "--learner", learner, "--bc-steps", "20", "--target", "1e9",
            "--out-dir", str(runs), *tiny, timeout=300,
        )  # fmt: skip
    out = tmp_path / "ttr.json"
    run_script(script, "summarize", "--out-dir", str(runs), "--out", str(out), timeout=60)
    result = json.loads(out.read_text())
    for name in ("reinflow", "ppo"):
        row = result["learners"][name]
        assert row["reached"] == "0/1"  # an unreachable target: counted as a lower bound
        assert row["wall_s_to_target"]["median"] > 0
    run = json.loads((runs / "reinflow_seed0.json").read_text())
    assert run["bc_steps"] == 20 and run["env_steps_to_target"] is None
    assert [e["env_steps"] for e in run["evaluations"]][:2] == [0, 2048]
    assert "reinflow_over_ppo_wall_s_to_target" in result["ratios_of_medians"]


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
    flow = {"reinflow", "policyflow", "fpo", "fpo_pp", "nft", "dppo"}
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
