"""experiments/train.py stages: dataset -> bc -> finetune, explore -> finetune, shared
pretraining, resumed stages, refusals."""

import json
import os
import re
import signal
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from flowrl.algos import EDP, EDPExplore, ReinFlow
from flowrl.checkpoints import TrainingCheckpoint
from flowrl.data import OfflineDataset, collect_dataset, random_policy
from flowrl.experiments import pretrain
from flowrl.experiments import train as TRAIN
from flowrl.policies import FlowActor

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "env=pendulum",
    "env.max_episode_steps=50",
    "total_timesteps=128",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    "policy.value_hidden=[16]",
    "policy.noise_hidden=[8]",
    "eval.freq=128",
    "eval.episodes=1",
    "progress_bar=false",
    "dataset.transitions=300",
    "bc.actor={width: 16, depth: 1, num_steps: 2}",
    "bc.train.steps=20",
    "bc.train.batch_size=32",
]


config = TRAIN.compose_config


def test_pipeline_runs_every_stage_and_shares_pretraining(tmp_path, capsys):
    pre = tmp_path / "pretrain"
    stages = ["stages=[dataset,bc,finetune]", f"pretrain_dir={pre}"]
    teacher = ["dataset.teacher_timesteps=64", "dataset.teacher_n_envs=1"]
    results = TRAIN.train(config(*TINY, *stages, *teacher, f"output_dir={tmp_path}/s0"))
    for name in ("teacher.zip", "dataset.npz", "dataset.json", "stage.json"):
        assert (pre / "dataset" / name).is_file(), name
    assert (pre / "bc" / "bc.pt").is_file() and (pre / "bc" / "stage.json").is_file()
    assert not list(pre.rglob("*.partial.*"))  # written under temporary names, then renamed
    data = OfflineDataset.load_npz(pre / "dataset" / "dataset.npz")
    assert len(data) == 300 and data.timeouts.sum() == 6  # 50-step episodes
    assert results["dataset"]["episodes"] == 6 and results["bc"]["steps"] == 20
    assert results["config"]["pretrained"] is None  # the config as given; bc made it
    model = ReinFlow.load(tmp_path / "s0" / "model.zip")
    assert model.policy.num_steps == 2 and model.policy.actor.config.width == 16  # BC's actor
    out = capsys.readouterr().out
    assert "dataset: return" in out and "deterministic: start" in out

    # Another fine-tuning seed reuses the dataset, the teacher and the BC actor.
    stamps = {p: p.stat().st_mtime_ns for p in pre.rglob("*") if p.is_file()}
    TRAIN.train(config(*TINY, *stages, *teacher, "seed=1", f"output_dir={tmp_path}/s1"))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (tmp_path / "s1" / "results.json").is_file()
    # Other BC settings in the same pretrain_dir are refused, never silently reused.
    with pytest.raises(ValueError, match="differs in: train"):
        TRAIN.train(
            config(*TINY, *stages, *teacher, "bc.train.steps=30", f"output_dir={tmp_path}/s2")
        )


def test_random_dataset_and_bc_only(tmp_path):
    pre = tmp_path / "pretrain"
    overrides = [*TINY, "stages=[dataset,bc]", "dataset.quality=random", f"pretrain_dir={pre}"]
    results = TRAIN.train(config(*overrides, f"output_dir={tmp_path}/run"))
    assert not (pre / "dataset" / "teacher.zip").exists()  # random actions need no teacher
    assert "timesteps" not in results and (tmp_path / "run" / "results.json").is_file()
    actor = FlowActor.load(pre / "bc" / "bc.pt")
    assert actor.config.num_steps == 2
    summary = json.loads((pre / "dataset" / "dataset.json").read_text())
    assert summary["quality"] == "random" and summary["transitions"] == 300


def test_given_dataset_path_is_used_as_is(tmp_path):
    env = gym.make("Pendulum-v1", max_episode_steps=50)
    collect_dataset(env, random_policy(env.action_space), 200).dataset.save_npz(tmp_path / "d.npz")
    overrides = [*TINY, "stages=[bc]", f"dataset.path={tmp_path / 'd.npz'}"]
    TRAIN.train(config(*overrides, f"pretrain_dir={tmp_path}/pre", f"output_dir={tmp_path}/run"))
    assert not (tmp_path / "pre" / "dataset").exists()
    assert (tmp_path / "pre" / "bc" / "bc.pt").is_file()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["stages=[finetune,bc]"], "in that order"),
        (["stages=[pretrain]"], "choose a non-empty subset"),
        (["stages=[]"], "choose a non-empty subset"),
        (["stages=[bc,finetune]", "pretrained=bc.pt"], "drop pretrained"),
        (["stages=[dataset,bc,explore,finetune]"], "bc and explore, which both make"),
        (["stages=[bc,explore]"], "keep one of the two"),
        (["stages=[explore,finetune]", "pretrained=p.pt"], "includes explore, .* drop pretr"),
        (["stages=[explore,finetune]", "from_scratch=true"], "from_scratch=true .* explore"),
        (["stages=[explore,bc]"], "in that order"),
        (["stages=[explore]", "explore.behavior=ddpg"], "explore.behavior must be one of"),
        (["stages=[explore]", "explore.steps=0"], "explore.steps must be >= 1"),
        (["stages=[explore]", "+explore.intrinsic.num_draw=3"], "intrinsic has no option num_d"),
        (["stages=[explore]", "+explore.actor.widht=8"], "explore.actor has no option widht"),
        (["stages=[explore]", "env.action_chunk=2"], "does not take env.action_chunk=2"),
        (["stages=[explore]", "checkpoint.explore_steps=-1"], "explore_steps must be >= 0"),
        (["stages=[bc]"], "needs a dataset"),
        (["stages=[dataset]", "dataset.quality=expertish"], "quality must be one of"),
        (["stages=[dataset]", "dataset.teacher=td3"], "teacher must be one of"),
        (["stages=[bc]", "dataset.path=missing.npz"], "does not exist"),
    ],
)
def test_bad_stage_settings_are_refused(tmp_path, overrides, match):
    cfg = config(*TINY, *overrides, f"pretrain_dir={tmp_path}/pre", f"output_dir={tmp_path}/o")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        TRAIN.train(cfg)
    if any(o.startswith("stages=") and "explore" in o for o in overrides):
        assert not tmp_path.joinpath("pre").exists()  # refused before anything was written


def test_dataset_returns_split_episodes(tmp_path):
    env = gym.make("Hopper-v5")
    collected = collect_dataset(env, random_policy(env.action_space), 500, seed=2)
    collected.dataset.save_npz(tmp_path / "d.npz")
    returns = pretrain.dataset_returns(tmp_path / "d.npz")
    # Every finished episode, then the cut-short last one.
    np.testing.assert_allclose(returns[:-1], collected.episode_returns, rtol=1e-5)
    assert returns.size == collected.episode_returns.size + 1
    np.testing.assert_allclose(returns.sum(), collected.dataset.rewards.sum(), rtol=1e-5)


def test_dataset_stage_also_saves_a_minari_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    overrides = [*TINY, "stages=[dataset]", "dataset.quality=random"]
    overrides += ["dataset.minari_id=flowrl/pendulum-random-v0", f"pretrain_dir={tmp_path}/pre"]
    TRAIN.train(config(*overrides, f"output_dir={tmp_path}/run"))
    from flowrl.data import load_minari

    from_minari = load_minari("flowrl/pendulum-random-v0")
    from_npz = OfflineDataset.load_npz(tmp_path / "pre" / "dataset" / "dataset.npz")
    np.testing.assert_array_equal(from_minari.actions, from_npz.actions)
    np.testing.assert_array_equal(from_minari.timeouts, from_npz.timeouts)


def test_teacher_on_normalized_observations_records_raw_ones(tmp_path):
    pre = tmp_path / "pretrain"
    overrides = [*TINY, "stages=[dataset]", f"pretrain_dir={pre}", "dataset.teacher_n_envs=1"]
    overrides += ["dataset.teacher_timesteps=256", "dataset.teacher_norm_obs=true"]
    TRAIN.train(config(*overrides, f"output_dir={tmp_path}/run"))
    stage = pre / "dataset"
    assert (stage / "teacher.zip").is_file() and (stage / "teacher_vecnormalize.pkl").is_file()
    cfg = pretrain.DatasetStageConfig(
        teacher_timesteps=256, teacher_n_envs=1, teacher_norm_obs=True
    )
    teacher = pretrain._train_teacher(cfg, "Pendulum-v1", {"max_episode_steps": 50}, stage)
    assert isinstance(teacher, pretrain.ObsNormalizedTeacher)  # loaded from the cache
    stats = teacher.normalizer.obs_rms
    assert np.abs(stats.mean).max() > 1e-3  # the statistics were learned, not the identity
    # predict on raw observations = the model on observations normalized by those statistics
    obs = np.array([[0.5, -0.8, 3.0], [-1.0, 0.0, -6.0]], dtype=np.float32)
    normalized = np.clip((obs - stats.mean) / np.sqrt(stats.var + 1e-8), -10, 10)
    want, _ = teacher.model.predict(normalized.astype(np.float32), deterministic=True)
    got, _ = teacher.predict(obs, deterministic=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the dataset holds raw Pendulum observations: |cos|, |sin| <= 1 and |theta_dot| <= 8
    data = OfflineDataset.load_npz(stage / "dataset.npz")
    assert np.abs(data.observations[:, :2]).max() <= 1.0 + 1e-6
    assert np.abs(data.observations[:, 2]).max() <= 8.0 + 1e-6
    assert np.abs(data.observations[:, 2]).max() > 1.0  # not squashed by the normalizer


def test_pipeline_with_action_chunks(tmp_path):
    pre = tmp_path / "pretrain"
    overrides = [*TINY, "stages=[dataset,bc,finetune]", "dataset.quality=random"]
    overrides += [f"pretrain_dir={pre}", "env.action_chunk=2", f"output_dir={tmp_path}/run"]
    results = TRAIN.train(config(*overrides))
    actor = FlowActor.load(pre / "bc" / "bc.pt")
    assert actor.config.action_dim == 2  # two 1-D Pendulum actions per decision
    assert json.loads((pre / "bc" / "stage.json").read_text())["action_chunk"] == 2
    # total_timesteps and eval.freq are env steps: 128 env steps = 64 decisions
    assert results["timesteps"] == 64 and results["env_steps"] == 128
    assert [row["env_steps"] for row in results["curve"]] == [0, 128]
    model = ReinFlow.load(tmp_path / "run" / "model.zip")
    assert model.action_space.shape == (2,)
    # a chunked actor does not fit the plain env: a clear error, not a silent reshape
    with pytest.raises(ValueError, match="pretrained actor has"):
        TRAIN.train(
            config(*TINY, f"pretrained={pre / 'bc' / 'bc.pt'}", f"output_dir={tmp_path}/plain")
        )
    with pytest.raises(ValueError, match="env.action_chunk must be >= 1"):
        TRAIN.train(config(*TINY, "env.action_chunk=0", f"output_dir={tmp_path}/bad"))


def test_dataset_paths_in_a_package_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of the repository under the working folder
    shipped = pretrain.data_file("pkg://flowrl.experiments/datasets/hopper_medium_v5.npz")
    assert shipped.is_file() and shipped.name == "hopper_medium_v5.npz"
    cfg = TRAIN.compose_config("experiment=main")
    assert cfg.dataset.path == "pkg://flowrl.experiments/datasets/hopper_medium_v5.npz"
    assert pretrain.make_dataset(cfg.dataset, "Hopper-v5", tmp_path / "unused") == shipped
    with pytest.raises(FileNotFoundError, match="pkg://flowrl.experiments/nope.npz does not"):
        pretrain.data_file("pkg://flowrl.experiments/nope.npz")
    with pytest.raises(ValueError, match="no package 'flowrl_nothing'"):
        pretrain.data_file("pkg://flowrl_nothing/x.npz")
    with pytest.raises(ValueError, match="write pkg://<package>/<file in it>"):
        pretrain.data_file("pkg://flowrl.experiments")
    with pytest.raises(FileNotFoundError, match="dataset.path relative.npz does not exist"):
        pretrain.data_file("relative.npz")


# ---------------------------------------------------------------------- explore -> finetune

EXPLORE_TINY = [
    "algo=edp",
    "env=pendulum",
    "env.max_episode_steps=50",
    "explore.steps=300",
    "explore.learning_starts=100",
    "explore.batch_size=32",
    "explore.net_arch=[16]",
    "explore.intrinsic={num_draws: 2, width: 16, depth: 1}",
    "explore.actor={width: 16, depth: 1, num_steps: 2}",
    "total_timesteps=300",
    "algo.learning_starts=100",
    "algo.batch_size=32",
    "algo.num_candidates=4",
    "algo.buffer_size=1000",
    "policy.value_hidden=[16]",
    "eval.freq=300",
    "eval.episodes=1",
    "eval.stochastic=false",
    "progress_bar=false",
]
PARTIAL = re.compile(r"\.tmp$|\.partial\.")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_explore_then_finetune_starts_edp_from_the_explored_flow(tmp_path, capsys):
    pre = tmp_path / "pretrain"
    stages = ["stages=[explore,finetune]", f"pretrain_dir={pre}"]
    results = TRAIN.train(config(*EXPLORE_TINY, *stages, f"output_dir={tmp_path}/s0"))
    stage = pre / "explore"
    prior = stage / "prior.pt"
    assert prior.is_file() and not (stage / "checkpoint.pt").exists()
    assert not [p for p in pre.rglob("*") if PARTIAL.search(p.name)]
    summary = json.loads((stage / "explore.json").read_text())
    # explore.env_id null: the task env, with its time limit; not a maze: no coverage
    assert (summary["env"], summary["steps"], summary["behavior"]) == (
        "Pendulum-v1",
        300,
        "gaussian",
    )
    assert summary["seconds"] > 0 and "cells" not in summary
    settings = json.loads((stage / "stage.json").read_text())
    assert settings["env_kwargs"] == {"max_episode_steps": 50} and settings["seed"] == 0
    assert any((stage / "tb").iterdir())
    assert results["explore"]["path"] == str(prior) and results["explore"]["steps"] == 300
    assert results["config"]["pretrained"] is None  # the config as given; explore made it
    assert results["timesteps"] == 300
    model = EDP.load(tmp_path / "s0" / "model.zip")
    assert model.policy.num_steps == 2 and model.policy.actor.config.width == 16  # π_pre's
    assert model.warmup == "policy"
    assert _same_weights(model.policy.reference, FlowActor.load(prior))  # π_pre, frozen
    assert "explore: 300 env steps of Pendulum-v1" in capsys.readouterr().out

    # Another fine-tuning run (same seed, same settings) reuses the stage untouched.
    stamps = {p: p.stat().st_mtime_ns for p in pre.rglob("*") if p.is_file()}
    again = TRAIN.train(
        config(*EXPLORE_TINY, *stages, "algo.beta=0.5", f"output_dir={tmp_path}/s1")
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["explore"] == results["explore"] and again["config"]["algo"]["beta"] == 0.5
    # Other explore settings (or another seed) in the same pretrain_dir are refused.
    for change, key in (("explore.steps=400", "steps"), ("seed=1", "seed")):
        with pytest.raises(ValueError, match=f"made with other settings .*differs in: {key}"):
            TRAIN.train(config(*EXPLORE_TINY, *stages, change, f"output_dir={tmp_path}/x"))
    assert not (tmp_path / "x" / "results.json").exists()


def test_edp_without_a_pretrained_flow_is_refused(tmp_path):
    out = tmp_path / "run"
    cfg = config(*EXPLORE_TINY, f"pretrain_dir={tmp_path}/pre", f"output_dir={out}")
    with pytest.raises(ValueError, match=r"algo=edp fine-tunes a pretrained flow .*") as refused:
        TRAIN.train(cfg)
    for way in ("pretrained=<prior.pt>", "stages=[explore,finetune]", "from_scratch=true"):
        assert way in str(refused.value)
    assert not out.exists()
    # An explore stage's π_pre in pretrain_dir is named; from_scratch=true trains a fresh flow.
    explored = [*EXPLORE_TINY, "stages=[explore]", f"pretrain_dir={tmp_path}/pre"]
    TRAIN.train(config(*explored, f"output_dir={tmp_path}/explored"))
    prior = tmp_path / "pre" / "explore" / "prior.pt"
    with pytest.raises(ValueError, match=f"there is one: {re.escape(str(prior))}"):
        TRAIN.train(cfg)
    with pytest.raises(ValueError, match="holds the explore stage's actor"):  # other flow algos
        TRAIN.check_bc_actor_chosen(
            config("algo=flowsac", f"pretrain_dir={tmp_path}/pre", f"output_dir={out}")
        )
    results = TRAIN.train(
        config(
            *EXPLORE_TINY,
            "policy.actor.width=8",
            "from_scratch=true",
            f"pretrain_dir={tmp_path}/pre",
            f"output_dir={out}",
        )
    )
    assert results["timesteps"] == 300 and "explore" not in results
    model = EDP.load(out / "model.zip")
    assert model.policy.actor.config.width == 8 and model.warmup == "uniform"


def test_explore_with_a_flow_behaviour_policy(tmp_path, monkeypatch):
    from flowrl.algos import EDPExploreFlow

    made = []
    setup = EDPExploreFlow._setup_model

    def record(self):
        made.append(self)
        setup(self)

    monkeypatch.setattr(EDPExploreFlow, "_setup_model", record)
    overrides = [*EXPLORE_TINY, "stages=[explore]", "explore.behavior=flow", "explore.steps=150"]
    results = TRAIN.train(
        config(*overrides, f"pretrain_dir={tmp_path}/pre", f"output_dir={tmp_path}/run")
    )
    assert "timesteps" not in results and results["explore"]["behavior"] == "flow"
    assert type(made[0].policy).__name__ == "FlowSACPolicy"
    assert made[0].policy.actor.config.width == 16  # explore.net_arch=[16]: one block of 16
    actor = FlowActor.load(tmp_path / "pre" / "explore" / "prior.pt")
    assert actor.config.num_steps == 2 and actor.config.obs_dim == 3


def test_interrupted_explore_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    pre, out = tmp_path / "pretrain", tmp_path / "run"
    cfg = config(
        *EXPLORE_TINY,
        "stages=[explore,finetune]",
        "checkpoint.explore_steps=100",
        f"pretrain_dir={pre}",
        f"output_dir={out}",
    )
    live = []
    train = EDPExplore.train

    def train_then_signal(self, *args, **kwargs):
        train(self, *args, **kwargs)
        if self.num_timesteps == 200:  # the signal arrives after an update
            live.append(self)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(EDPExplore, "train", train_then_signal)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.train(cfg)
    stage = pre / "explore"
    assert not (stage / "prior.pt").exists() and not (out / "results.json").exists()
    assert "explore: interrupted at step 200; checkpoint ->" in capsys.readouterr().out
    state = TrainingCheckpoint(stage / "checkpoint.pt", save_freq=0).load()
    assert state["counters"]["num_timesteps"] == 200 and state["algorithm"] == "EDPExplore"
    assert state["replay_buffer"]["pos"] == live[0].replay_buffer.pos == 200
    for name in ("prior_actor", "novelty_model"):  # π_pre and the state model as they were
        saved, now = state["parameters"][name], getattr(live[0], name).state_dict()
        assert all(np.array_equal(saved[k], now[k]) for k in now), name
    assert state["extra"]["seconds"] > 0
    assert not [p for p in tmp_path.rglob("*") if PARTIAL.search(p.name)]

    monkeypatch.setattr(EDPExplore, "train", train)
    results = TRAIN.train(cfg)  # the same command: resumes, finishes, fine-tunes
    assert f"resuming {stage / 'checkpoint.pt'} at step 200" in capsys.readouterr().out
    assert json.loads((stage / "explore.json").read_text())["steps"] == 300
    assert (stage / "prior.pt").is_file() and not (stage / "checkpoint.pt").exists()
    assert results["explore"]["steps"] == 300 and results["timesteps"] == 300
    assert len(list((stage / "tb").iterdir())) == 1  # TensorBoard continued one run


def test_explore_stage_records_the_maze_coverage(tmp_path, monkeypatch):
    pytest.importorskip("gymnasium_robotics")
    monkeypatch.setattr(pretrain, "EXPLORE_COVERAGE_FREQ", 100)
    overrides = [
        "experiment=maze_edp",
        "stages=[explore]",
        *[o for o in EXPLORE_TINY if o.startswith("explore.")],
        "checkpoint.explore_steps=0",  # only on interruption
        "progress_bar=false",
        f"pretrain_dir={tmp_path}/pre",
        f"output_dir={tmp_path}/run",
    ]
    train = EDPExplore.train

    def train_then_signal(self, *args, **kwargs):
        train(self, *args, **kwargs)
        if self.num_timesteps == 252:  # the maze bundle's explore.train_freq is 4
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(EDPExplore, "train", train_then_signal)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.train(config(*overrides))
    monkeypatch.setattr(EDPExplore, "train", train)
    results = TRAIN.train(config(*overrides))
    summary = json.loads((tmp_path / "pre" / "explore" / "explore.json").read_text())
    assert summary["env"] == "flowrl/PointMaze-UMaze-v0" and summary["maze"] == "umaze"
    assert 0 < summary["cells"] <= 1 and 0 <= summary["entropy_normalized"] <= 1
    # the rows before the interruption came back with the checkpoint
    history = summary["coverage_history"]
    assert [row["timesteps"] for row in history] == [100, 200, 300]
    assert [row["cells"] for row in history] == sorted(row["cells"] for row in history)
    assert history[-1]["cells"] == summary["cells"] == results["explore"]["cells"]
    assert "coverage_history" not in results["explore"]
