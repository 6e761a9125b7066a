"""Reliability under torchrun: bad settings fail on every rank, an interrupted job resumes.

The library-level checks (bit-identical ranks, gradient of the union, a NaN or KL stop on one
rank, a rank that dies) are in ``tests/algos/test_distributed.py``; here: every on-policy
learner and the pipeline refuse settings the ranks cannot split, on every rank and without a
hang, and a ``torchrun`` job stopped by SIGTERM resumes when its command is rerun.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from learner_helpers import LEARNERS
from ranks import free_port, run_ranks
from stable_baselines3.common.vec_env import DummyVecEnv

from flowrl.experiments import train as TRAIN

# Tiny flow nets and a short evaluation: what every run here shares.
SMALL = [
    "policy.actor.width=16",
    "policy.actor.depth=1",
    "policy.noise_hidden=[8]",
    "policy.value_hidden=[16]",
    "eval.freq=256",
    "eval.episodes=1",
    "progress_bar=false",
]
PIPELINE = [
    "algo=reinflow",
    "env=pendulum",
    "from_scratch=true",
    "total_timesteps=512",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    *SMALL,
]


def _refusals(rank: int, folder: str) -> list[str]:
    """Every setting a 2-rank job cannot split, tried in turn; each rank's error messages."""
    messages = []

    def attempt(make) -> None:
        try:
            make()
            messages.append("no error")
        except ValueError as err:
            messages.append(str(err))

    venv = lambda: DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2)  # noqa: E731
    for spec in LEARNERS.values():
        attempt(
            lambda spec=spec: spec.cls(
                spec.alias,
                venv(),
                n_steps=8,
                batch_size=7,  # odd: 2 ranks cannot take equal shares
                policy_kwargs=spec.policy_kwargs(2),
                device="cpu",
                **spec.algo_kwargs,
            )
        )
    for spec in LEARNERS.values():  # a share larger than the rank's rollout
        attempt(
            lambda spec=spec: spec.cls(
                spec.alias,
                venv(),
                n_steps=8,
                batch_size=34,  # 17 rows a rank from a rollout of 8 steps x 2 envs
                policy_kwargs=spec.policy_kwargs(2),
                device="cpu",
                **spec.algo_kwargs,
            )
        )
    out = Path(folder)
    attempt(lambda: TRAIN.train(TRAIN.compose_config(*PIPELINE, "n_envs=3", f"output_dir={out}/a")))
    attempt(
        lambda: TRAIN.train(
            TRAIN.compose_config(
                "algo=ppo", "env=pendulum", "n_envs=2", "progress_bar=false", f"output_dir={out}/b"
            )
        )
    )
    attempt(
        lambda: TRAIN.train(
            TRAIN.compose_config(*PIPELINE, "distributed.backend=mpi", f"output_dir={out}/c")
        )
    )
    # and what they can split runs: FlowSAC through the pipeline, n_envs split 1 + 1
    results = TRAIN.train(
        TRAIN.compose_config(
            "algo=flowsac",
            "env=pendulum",
            "from_scratch=true",
            "n_envs=2",
            "total_timesteps=256",
            "algo.learning_starts=64",
            "algo.batch_size=32",
            *SMALL,
            f"output_dir={out}/flowsac",
        )
    )
    messages.append(f"flowsac {results.get('world_size', 'rank')} {results.get('timesteps')}")
    return messages


def test_settings_the_ranks_cannot_split_fail_on_every_rank_the_others_run(tmp_path):
    out = run_ranks(_refusals, 2, str(tmp_path), timeout_s=180)
    assert out[0][0] == out[1][0] == "ok", out
    first, second = out[0][1], out[1][1]
    assert first[:-1] == second[:-1]  # the same clear error on both ranks
    assert second[-1] == "flowsac rank 256"  # rank 1 reports its rank, writes nothing
    n = len(LEARNERS)
    for message in first[:n]:
        assert "not divisible by the world size 2" in message
    for message in first[n : 2 * n]:
        # n_envs counts every rank's envs: 8 steps x (2 ranks x 2 envs)
        assert "is larger than the rollout (n_steps * n_envs = 8 * 4 = 32)" in message
    assert (
        "n_envs=3 counts all ranks together and is not divisible by the world size 2"
        in (first[2 * n])
    )
    assert "algo=ppo does not train data-parallel" in first[2 * n + 1]
    assert "distributed.backend must be auto, gloo or nccl" in first[2 * n + 2]
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"flowsac"}  # the refused runs wrote nothing
    assert first[-1] == "flowsac 2 256"  # rank 0's results: 2 ranks, 256 env steps in all
    assert (tmp_path / "flowsac" / "results.json").is_file()


def _torchrun(out: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "flowrl.experiments.train",
        *PIPELINE,
        "total_timesteps=2048",
        "n_envs=2",
        "checkpoint.finetune_steps=128",
        f"output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with log.open("a") as file:
        return subprocess.Popen(cmd, stdout=file, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_a_torchrun_job_stopped_by_sigterm_resumes_on_rerun(tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    process = _torchrun(out, log)
    deadline = time.time() + 240
    while not (out / "checkpoint.pt").exists():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to every rank
    assert process.wait(timeout=120) != 0
    saved = torch.load(out / "checkpoint.pt", weights_only=True)["counters"]["num_timesteps"]
    assert 128 <= saved < 2048
    assert not (out / "results.json").exists()
    process = _torchrun(out, log)
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    resumed = int(text.split("checkpoint.pt: resuming at step ")[1].split()[0])
    assert resumed >= saved
    results = json.loads((out / "results.json").read_text())
    assert results["timesteps"] == 2048 and results["world_size"] == 2
    assert len(list((out / "tb").iterdir())) == 1
    assert not (out / "checkpoint.pt").exists()
