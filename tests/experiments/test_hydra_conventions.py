"""experiments/train.py's Hydra conventions: the BC actor is never skipped without a word, one
folder per job holds everything the job wrote, and ``--help`` lists train.py's groups only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flowrl.algos import ReinFlow
from flowrl.data import Normalizer
from flowrl.experiments import train as TRAIN
from flowrl.policies import FlowActor, FlowActorConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "train.py"

TINY = [
    "algo=reinflow",
    "env=pendulum",
    "env.max_episode_steps=20",
    "total_timesteps=64",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    "policy.num_steps=2",
    "policy.actor.width=16",
    "policy.actor.depth=1",
    "policy.noise_hidden=[8]",
    "policy.value_hidden=[16]",
    "eval.freq=64",
    "eval.episodes=1",
    "eval.stochastic=false",
    "progress_bar=false",
]
# The overrides of test_multirun_gives_each_seed_its_own_folder (test_train_configs.py).
TINY_CLI = [
    "experiment=pendulum_quick",
    "total_timesteps=128",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    "eval.freq=128",
    "eval.episodes=1",
    "env.max_episode_steps=20",
    "progress_bar=false",
]


def _bc_actor(pretrain_dir: Path, width: int = 12) -> Path:
    """A BC actor for Pendulum where the bc stage leaves it: ``<pretrain_dir>/bc/bc.pt``."""
    path = pretrain_dir / "bc" / "bc.pt"
    path.parent.mkdir(parents=True)
    FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=1, width=width, depth=1, num_steps=2),
        Normalizer.identity(3),
        Normalizer.box(np.array([-2.0]), np.array([2.0])),
    ).save(path)
    return path


def test_a_bc_actor_in_pretrain_dir_must_be_chosen_or_declined(tmp_path, capsys):
    pre = tmp_path / "pre"
    bc = _bc_actor(pre)
    config = lambda *extra: TRAIN.compose_config(*TINY, f"pretrain_dir={pre}", *extra)  # noqa: E731

    # stages=[finetune] (the default), pretrained unset: refused before anything runs.
    with pytest.raises(ValueError, match="holds a BC actor") as refused:
        TRAIN.train(config(f"output_dir={tmp_path / 'refused'}"))
    assert f"pretrained={bc}" in str(refused.value) and "from_scratch=true" in str(refused.value)
    assert not (tmp_path / "refused").exists()

    # Way out 1: start from the BC actor.
    out = tmp_path / "from_bc"
    results = TRAIN.train(config(f"pretrained={bc}", f"output_dir={out}"))
    assert results["config"]["pretrained"] == str(bc)
    assert ReinFlow.load(out / "model.zip").policy.actor.config.width == 12  # the BC actor's

    # Way out 2: train a fresh actor on purpose.
    out = tmp_path / "scratch"
    results = TRAIN.train(config("from_scratch=true", f"output_dir={out}"))
    assert results["config"]["from_scratch"] is True and results["config"]["pretrained"] is None
    assert ReinFlow.load(out / "model.zip").policy.actor.config.width == 16  # policy.actor's
    # from_scratch only acknowledges: without the BC actor it is the same (finished) run.
    bc.unlink()
    assert TRAIN.train(config(f"output_dir={out}")) == results
    assert "skipping" in capsys.readouterr().out


def test_from_scratch_contradictions_and_what_it_leaves_alone(tmp_path):
    pre = tmp_path / "pre"
    bc = _bc_actor(pre)
    config = lambda *extra: TRAIN.compose_config(*TINY, f"pretrain_dir={pre}", *extra)  # noqa: E731
    with pytest.raises(ValueError, match="from_scratch=true .* pretrained=.*drop one"):
        TRAIN.check_compatible(config("from_scratch=true", f"pretrained={bc}"))
    with pytest.raises(ValueError, match="from_scratch=true .* stages includes bc"):
        TRAIN.check_compatible(config("from_scratch=true", "stages=[bc,finetune]"))
    # Not refused: the pipeline makes (or remakes) its actor; nothing is fine-tuned; Gaussian
    # policies always start from scratch.
    for extra in (["stages=[bc,finetune]"], ["stages=[dataset,bc]"], ["algo=ppo"], ["algo=sac"]):
        TRAIN.check_bc_actor_chosen(TRAIN.compose_config(*extra, f"pretrain_dir={pre}"))
    with pytest.raises(ValueError, match="holds a BC actor"):  # PolicyFlow's policy: a flow
        TRAIN.check_bc_actor_chosen(TRAIN.compose_config("algo=policyflow", f"pretrain_dir={pre}"))


def _run(args, cwd):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _assert_job_folder(folder: Path, seed: int, overrides: list[str]) -> None:
    """The job's results and Hydra's records of it, all in ``folder``."""
    assert json.loads((folder / "results.json").read_text())["config"]["seed"] == seed
    assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["seed"] == seed
    assert set(overrides) <= set(yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()))
    assert (folder / ".hydra" / "hydra.yaml").is_file()
    assert (folder / "train.log").is_file()


def test_single_run_keeps_hydra_files_and_log_in_output_dir(tmp_path):
    args = [*TINY_CLI, "seed=3", "output_dir=runs/single"]  # relative: to the working dir
    _run(args, tmp_path)
    _assert_job_folder(tmp_path / "runs" / "single", 3, ["seed=3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing else anywhere


def test_multirun_keeps_each_jobs_hydra_files_and_log_in_its_output_dir(tmp_path):
    args = ["-m", *TINY_CLI, "seed=0,1", "output_dir=runs/seed${seed}"]
    _run([*args, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    for seed in (0, 1):
        _assert_job_folder(tmp_path / "runs" / f"seed{seed}", seed, [f"seed={seed}"])
    # The sweep's folder holds its multirun.yaml only.
    assert [p.name for p in (tmp_path / "sweep").iterdir()] == ["multirun.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "sweep"]


def test_help_lists_train_groups_only():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    groups = done.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    for line in (
        "algo: dppo, dsrl, edp, flowsac, fpo, fpo_pp, nft, policyflow, ppo, reinflow, sac",
        "policy: diffusion, dsrl, edp, flow, flowsac, fpo, gaussian, policyflow",
        "experiment: hopper_h2h, hopper_medium_1m,",
        "recipe: reinflow_mujoco",
    ):
        assert line in groups, groups
    assert "env: ant," in groups and "mjx/hopper" in groups and "pendulum" in groups
    assert "pointmaze_umaze" in groups and "maze_edp" in groups
    assert "schema/" not in done.stdout
    presets = [path.stem for path in (ROOT / "configs" / "dataset").glob("*.yaml")]
    assert presets and not [name for name in presets if name in done.stdout]
    assert "dataset:" not in groups
