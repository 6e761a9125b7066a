"""experiments/train.py stages: dataset -> bc -> finetune, shared pretraining, refusals."""

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from flowrl.algos import ReinFlow
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
