"""Every loader of flowrl's own formats refuses a crafted file without running its payload.

A planted file holds a pickle whose ``__reduce__`` touches a marker; the ``planter`` fixture
fails the test if the marker appears. Each row names a loader and how a user reaches it,
including the automatic paths (a rerun resuming from its output folder, a pipeline stage
finding its cached files). The generator trainers' rows are in ``test_generators.py``.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from learner_helpers import LEARNERS
from stable_baselines3.common.env_util import make_vec_env

from flowrl.algos.bc import FlowBC
from flowrl.checkpoints import TrainingCheckpoint, load_checkpoint_file
from flowrl.data.datasets import OfflineDataset
from flowrl.experiments import pretrain
from flowrl.experiments import train as TRAIN
from flowrl.policies import FlowActor

ROOT = Path(__file__).resolve().parents[2]


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def small_dataset() -> OfflineDataset:
    rng = np.random.default_rng(0)
    return OfflineDataset(
        observations=rng.normal(size=(32, 3)).astype(np.float32),
        actions=rng.uniform(-2, 2, size=(32, 1)).astype(np.float32),
    )


# Each loader: (plant, path) -> a call that must refuse the file.
def actor_load(path: Path, tmp: Path) -> Callable[[], Any]:
    return lambda: FlowActor.load(path)


def pretrained(name: str) -> Callable[[Path, Path], Callable[[], Any]]:
    def make(path: Path, tmp: Path) -> Callable[[], Any]:
        learner = LEARNERS[name]
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
        return lambda: learner.cls(
            learner.alias, env, policy_kwargs={"pretrained": str(path)}, n_steps=16, batch_size=8
        )

    return make


def flowsac_pretrained(path: Path, tmp: Path) -> Callable[[], Any]:
    from flowrl.algos import FlowSAC

    return lambda: FlowSAC("FlowSACPolicy", "Pendulum-v1", policy_kwargs={"pretrained": str(path)})


def edp_pretrained(path: Path, tmp: Path) -> Callable[[], Any]:
    from flowrl.algos import EDP

    return lambda: EDP("EDPPolicy", "Pendulum-v1", policy_kwargs={"pretrained": str(path)})


def bc_load_checkpoint(path: Path, tmp: Path) -> Callable[[], Any]:
    return lambda: FlowBC.load_checkpoint(path, small_dataset())


def training_checkpoint(path: Path, tmp: Path) -> Callable[[], Any]:
    return lambda: TrainingCheckpoint(path, save_freq=0).load()


def any_checkpoint_file(path: Path, tmp: Path) -> Callable[[], Any]:
    return lambda: load_checkpoint_file(path, "flowrl checkpoint")


def finetune_resume(path: Path, tmp: Path) -> Callable[[], Any]:
    """A rerun of experiments/train.py finds checkpoint.pt in its output folder."""
    out = path.parent
    cfg = compose_cfg(
        "env=pendulum", "total_timesteps=128", "progress_bar=false", f"output_dir={out}"
    )
    return lambda: TRAIN.train(cfg)


def bc_stage_resume(path: Path, tmp: Path) -> Callable[[], Any]:
    """The bc stage finds trainer.ckpt in its folder (an interrupted BC)."""
    small_dataset().save_npz(tmp / "data.npz")
    cfg = pretrain.BCStageConfig()
    return lambda: pretrain.behaviour_clone(
        cfg, tmp / "data.npz", "Pendulum-v1", path.parent, False
    )


def bc_stage_cached_actor(path: Path, tmp: Path) -> Callable[[], Any]:
    """Fine-tuning starts from the bc stage's cached bc.pt (pretrained, chosen by the run)."""
    out = tmp / "run"
    cfg = compose_cfg(
        "env=pendulum",
        "total_timesteps=128",
        "progress_bar=false",
        f"output_dir={out}",
        f"pretrained={path}",
    )
    return lambda: TRAIN.train(cfg)


def explore_stage_resume(path: Path, tmp: Path) -> Callable[[], Any]:
    """The explore stage finds checkpoint.pt in its folder (an interrupted exploration)."""
    cfg = pretrain.ExploreStageConfig(steps=64, learning_starts=16, batch_size=8)
    return lambda: pretrain.explore_pretrain(cfg, "Pendulum-v1", path.parent, progress_bar=False)


def teacher_resume(path: Path, tmp: Path) -> Callable[[], Any]:
    """The dataset stage finds its teacher's checkpoint (teacher.ckpt or teacher.pt)."""
    cfg = pretrain.DatasetStageConfig(quality="medium", teacher_timesteps=64, transitions=16)
    return lambda: pretrain._train_teacher(cfg, "Pendulum-v1", {}, path.parent)


LOADERS = [
    ("FlowActor.load", "bc.pt", actor_load),
    *[(f"{name}(pretrained=)", "bc.pt", pretrained(name)) for name in sorted(LEARNERS)],
    ("flowsac(pretrained=)", "bc.pt", flowsac_pretrained),
    ("edp(pretrained=)", "prior.pt", edp_pretrained),
    ("FlowBC.load_checkpoint", "trainer.ckpt", bc_load_checkpoint),
    ("TrainingCheckpoint.load", "checkpoint.pt", training_checkpoint),
    ("load_checkpoint_file", "any.pt", any_checkpoint_file),
    ("train.py resume", "run/checkpoint.pt", finetune_resume),
    ("bc stage resume", "bc/trainer.ckpt", bc_stage_resume),
    ("bc stage actor", "bc/bc.pt", bc_stage_cached_actor),
    ("explore stage resume", "explore/checkpoint.pt", explore_stage_resume),
    ("dataset stage teacher.ckpt", "dataset/teacher.ckpt", teacher_resume),
    ("dataset stage teacher.pt", "dataset/teacher.pt", teacher_resume),
]
FORMATS = ["torch_file", "raw_pickle", "bare_object"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name, filename, make", LOADERS, ids=[row[0] for row in LOADERS])
def test_a_planted_pickle_is_refused_unrun(planter, tmp_path, name, filename, make, fmt):
    path = tmp_path / filename
    if fmt == "torch_file":
        planter.torch_file(path)
    elif fmt == "raw_pickle":
        planter.raw_pickle(path)
    else:
        planter.torch_file(path, wrap=False)
    load = make(path, tmp_path)
    with pytest.raises(ValueError, match=rf"{path.name}.*(pickled|not a readable|is not a)"):
        load()
    assert not planter.ran()


def test_a_dataset_with_a_pickled_object_array_is_refused_unrun(planter, tmp_path):
    path = planter.npz(tmp_path / "data.npz")
    with pytest.raises(ValueError, match=r"data.npz holds pickled \(object\) arrays"):
        OfflineDataset.load_npz(path)


def test_the_bc_stage_refuses_a_planted_dataset(planter, tmp_path):
    path = planter.npz(tmp_path / "data.npz")
    with pytest.raises(ValueError, match=r"data.npz holds pickled"):
        pretrain.behaviour_clone(
            pretrain.BCStageConfig(), path, "Pendulum-v1", tmp_path / "bc", False
        )
