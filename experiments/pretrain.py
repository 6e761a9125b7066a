"""Pretraining stages of the experiment pipeline: a dataset and BC, or reward-free exploration.

Used by ``experiments/train.py`` (``stages=[dataset,bc,finetune]`` or
``stages=[explore,finetune]``). Each stage writes into
its own folder with a ``stage.json`` of the settings it ran with; a folder that already holds
the stage's output for the same settings is reused (so an interrupted pipeline continues
where it stopped, and fine-tuning seeds share one dataset and one BC actor), and one made
with other settings is refused rather than silently reused.

* **dataset**: train an SB3 teacher (PPO or SAC) on the env, roll it out at a quality level
  (``random``: uniform actions; ``medium`` / ``expert``: the teacher after
  ``teacher_timesteps`` steps, a short or a long training) and save the transitions as a
  D4RL-style ``.npz`` and, optionally, as a local Minari dataset.
* **bc**: behaviour-clone a :class:`~flowrl.policies.FlowActor` on that dataset and save its
  EMA weights (``bc.pt``), the checkpoint ReinFlow fine-tunes. Data-parallel under
  ``torchrun``: every rank calls :func:`behaviour_clone` and trains (``bc.train.batch_size``
  is the global batch); rank 0 alone claims, locks and writes the stage folder.
* **explore**: EDP's reward-free pretraining (:class:`~flowrl.algos.EDPExplore`, or
  :class:`~flowrl.algos.EDPExploreFlow` with a flow behaviour policy): a behaviour policy
  trained on the score intrinsic reward collects data without reading the env's reward, and
  a flow policy π_pre fitted to the replay buffer's actions is saved as a FlowActor checkpoint
  (``prior.pt``), the one :class:`~flowrl.algos.EDP` fine-tunes (any flow learner takes it).
  On a flowrl PointMaze (``flowrl/PointMaze-*``) ``explore.json`` also records the coverage
  of the maze.

Under ``torchrun`` the dataset and explore stages are not data-parallel: rank 0 alone runs
them (e.g. through :func:`flowrl.distributed.on_main`); the bc stage is, and every rank
calls it.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: stage and run folders are not locked
    fcntl = None  # type: ignore[assignment]

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm

from flowrl import distributed
from flowrl.algos import EDPExplore, EDPExploreFlow
from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.algos.exploration import intrinsic_options
from flowrl.callbacks import CoverageCallback
from flowrl.checkpoints import (
    TrainingCheckpoint,
    atomic_save,
    sigterm_as_interrupt,
    training_state,
)
from flowrl.data import (
    OfflineDataset,
    chunk_actions,
    collect_dataset,
    random_policy,
    save_minari,
)
from flowrl.envs import ActionChunk
from flowrl.policies import DiffusionActor, FlowActor, FlowActorConfig

QUALITIES = ("random", "medium", "expert")


@dataclass
class DatasetStageConfig:
    """How the offline dataset is made (``dataset`` stage)."""

    # An existing .npz to use as is (skips the stage): a file path, or pkg://<module>/<file>
    # for one shipped in a package, e.g. pkg://flowrl.experiments/datasets/hopper_medium_v5.npz
    path: str | None = None
    quality: str = "medium"  # random | medium | expert
    teacher: str = "ppo"  # ppo | sac (SB3 defaults otherwise)
    teacher_timesteps: int = 300_000  # teacher training budget for medium / expert
    teacher_n_envs: int = 4
    # Train the teacher on VecNormalize'd observations and rewards (as the SB3 zoo does on
    # MuJoCo); the dataset still records raw observations. Off by default so the shipped
    # Hopper dataset, made without it, stays reproducible.
    teacher_norm_obs: bool = False
    transitions: int = 50_000  # rows to record
    deterministic: bool = False  # stochastic teacher rollouts, as D4RL's datasets
    minari_id: str | None = None  # also save as this local Minari dataset id
    seed: int = 0


@dataclass
class BCStageConfig:
    """Behaviour cloning of the flow actor (``bc`` stage)."""

    # "flow": a FlowActor by flow matching (every learner takes it; DPPO reads it as a noise
    # predictor); "diffusion": a DiffusionActor by the DDPM noise-prediction loss (DPPO only)
    kind: str = "flow"
    actor: dict[str, Any] = field(
        default_factory=lambda: {"width": 256, "depth": 2, "num_steps": 4}
    )  # FlowActorConfig fields
    train: BCConfig = field(default_factory=lambda: BCConfig(steps=5000, batch_size=256))


@dataclass
class ExploreStageConfig:
    """Reward-free pretraining of EDP's π_pre (``explore`` stage)."""

    # The env explored without its reward, e.g. flowrl/PointMaze-UMaze-v0 (its registered
    # time limit); null: the task env (env.id, with env.kwargs and env.max_episode_steps)
    env_id: str | None = None
    steps: int = 100_000  # env steps of exploration (the replay buffer keeps every one)
    # The behaviour policy: "gaussian" (EDPExplore: SB3 SAC's MlpPolicy) or "flow"
    # (EDPExploreFlow: a FlowSACPolicy, slower: a K-step chain per env step)
    behavior: str = "gaussian"
    learning_starts: int = 100  # uniform-action env steps before the first update
    batch_size: int = 256  # replay minibatch of every update (behaviour, state model, π_pre)
    train_freq: int = 1  # env steps between updates
    gradient_steps: int = 1  # gradient steps per update (-1: as many as env steps)
    net_arch: list[int] = field(default_factory=lambda: [256, 256])  # behaviour nets' widths
    # ScoreNovelty's options: the flow model of the visited states whose flow-matching error
    # is the intrinsic reward (num_draws (t, eps) draws per state, its width, depth and
    # learning_rate)
    intrinsic: dict[str, Any] = field(
        default_factory=lambda: {"num_draws": 20, "width": 256, "depth": 2, "learning_rate": 1e-4}
    )
    intrinsic_scale: float = 1.0  # multiplier of the normalized intrinsic reward
    novelty_updates: int = 1  # state-model steps per replay batch
    actor: dict[str, Any] = field(
        default_factory=lambda: {"width": 256, "depth": 3, "num_steps": 8}
    )  # FlowActorConfig fields of π_pre (the actor fine-tuning starts from)
    actor_learning_rate: float = 3e-4  # Adam step size of π_pre
    actor_updates: int = 1  # flow-matching steps of π_pre per replay batch (0: not fitted)


PACKAGE_SCHEME = "pkg://"
# What the bc stage trains (bc.kind).
BC_KINDS: dict[str, type[FlowActor]] = {"flow": FlowActor, "diffusion": DiffusionActor}


def data_file(path: str | os.PathLike[str]) -> Path:
    """The file a ``dataset.path`` names: a path, or ``pkg://<module>/<file>`` in a package.

    ``pkg://`` (Hydra's spelling for configs in a package) finds data shipped with an
    installed package from any working folder, e.g.
    ``pkg://flowrl.experiments/datasets/hopper_medium_v5.npz``.

    Raises:
        FileNotFoundError: If the file does not exist (naming the package's folder).
        ValueError: For a ``pkg://`` path without a file part or of a module that does not
            import.
    """
    text = str(path)
    if not text.startswith(PACKAGE_SCHEME):
        file = Path(text)
        if not file.exists():
            raise FileNotFoundError(f"dataset.path {file} does not exist")
        return file
    module, _, relative = text[len(PACKAGE_SCHEME) :].partition("/")
    if not module or not relative:
        raise ValueError(f"dataset.path {text}: write pkg://<package>/<file in it>")
    try:
        root = Path(str(files(module)))
    except ModuleNotFoundError as err:
        raise ValueError(f"dataset.path {text}: no package {module!r} ({err})") from err
    file = root / relative
    if not file.is_file():
        raise FileNotFoundError(f"dataset.path {text} does not exist (no {file})")
    return file


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (JSON-like values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


@contextmanager
def folder_lock(folder: Path, wait: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` while this process writes into it.

    Two processes never write the same run or stage folder at once (e.g. parallel seeds that
    share ``pretrain_dir``): with ``wait`` the second one waits for the first (and then finds
    its work done), without it the second one stops with an error. The lock is
    ``folder/.lock`` under ``fcntl.flock`` (released by the OS when a process dies); where
    ``fcntl`` does not exist (Windows) folders are not locked.

    Raises:
        RuntimeError: Without ``wait``, if another process holds the folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            if not wait:
                raise RuntimeError(
                    f"{folder} is in use by another run ({owner}): wait for it to finish, or "
                    "choose another output_dir"
                ) from None
            print(f"{folder} is in use by another run ({owner}); waiting for it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim_stage(out: Path, settings: dict[str, Any]) -> None:
    """Record the settings a stage folder is made with; refuse a folder made with others.

    Raises:
        ValueError: ``out/stage.json`` holds different settings (naming the changed keys).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "stage.json"
    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they read back
    if path.exists():
        changed = differences(json.loads(path.read_text()), settings)
        if changed:
            raise ValueError(
                f"{out} was made with other settings (differs in: {', '.join(changed)}); "
                "point pretrain_dir elsewhere or delete the folder"
            )
        return
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _check_quality(quality: str) -> None:
    if quality not in QUALITIES:
        raise ValueError(f"dataset.quality must be one of {QUALITIES}, got {quality!r}")


class ObsNormalizedTeacher:
    """A teacher trained on normalized observations, acting on raw ones (SB3's ``predict``).

    Args:
        model: The SB3 model.
        normalizer: The ``VecNormalize`` it was trained with; its statistics are frozen here.
    """

    def __init__(self, model: BaseAlgorithm, normalizer: Any) -> None:
        self.model = model
        self.normalizer = normalizer
        self.normalizer.training = False

    def predict(self, observation: np.ndarray, deterministic: bool = False) -> tuple[Any, Any]:
        """Action for a raw observation (Do,) or a batch (B, Do)."""
        obs = self.normalizer.normalize_obs(np.asarray(observation, dtype=np.float32))
        return self.model.predict(obs, deterministic=deterministic)


def _train_teacher(
    cfg: DatasetStageConfig,
    env_id: str,
    env_kwargs: dict,
    out: Path,
    checkpoint_steps: int = 50_000,
) -> Any:
    """The SB3 teacher of a medium/expert dataset, trained once and cached.

    The cache is ``teacher.pt``, a flowrl training state (weights and, with
    ``cfg.teacher_norm_obs``, the ``VecNormalize`` statistics; read without unpickling);
    ``teacher.zip`` is written beside it for SB3 users but never loaded here. Training writes
    a resumable ``teacher.ckpt`` every ``checkpoint_steps`` env steps and on Ctrl-C/SIGTERM,
    and a rerun continues from it. With ``cfg.teacher_norm_obs`` the returned predictor
    normalizes raw observations.
    """
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    algos: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "sac": SAC}
    if cfg.teacher not in algos:
        raise ValueError(f"dataset.teacher must be one of {sorted(algos)}, got {cfg.teacher!r}")
    n_envs = cfg.teacher_n_envs if cfg.teacher == "ppo" else 1
    venv: Any = make_vec_env(env_id, n_envs=n_envs, seed=cfg.seed, env_kwargs=env_kwargs)
    if cfg.teacher_norm_obs:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True)
    teacher = algos[cfg.teacher]("MlpPolicy", venv, seed=cfg.seed, device="cpu")
    final = TrainingCheckpoint(out / "teacher.pt", save_freq=0)
    if final.exists():
        final.resume(teacher)
    else:
        ckpt = TrainingCheckpoint(out / "teacher.ckpt", save_freq=checkpoint_steps)
        (out / "teacher.ckpt.tmp").unlink(missing_ok=True)  # a process killed mid-write
        resumed = ckpt.exists()
        if resumed:
            ckpt.resume(teacher)
            print(f"dataset: resuming the teacher at step {teacher.num_timesteps}")
        if teacher.num_timesteps < cfg.teacher_timesteps:
            try:
                with sigterm_as_interrupt():
                    teacher.learn(
                        cfg.teacher_timesteps - teacher.num_timesteps,
                        callback=ckpt,
                        reset_num_timesteps=not resumed,
                    )
            except KeyboardInterrupt:
                ckpt.save_latest()
                print(f"\ndataset: teacher interrupted; checkpoint -> {ckpt.path}")
                raise
        atomic_save(training_state(teacher), final.path)  # the finished teacher, then SB3 files
        if cfg.teacher_norm_obs:
            venv.save(str(out / "teacher_vecnormalize.partial.pkl"))
            os.replace(out / "teacher_vecnormalize.partial.pkl", out / "teacher_vecnormalize.pkl")
        teacher.save(out / "teacher.partial.zip")
        os.replace(out / "teacher.partial.zip", out / "teacher.zip")
        ckpt.path.unlink(missing_ok=True)
    if cfg.teacher_norm_obs:
        return ObsNormalizedTeacher(teacher, venv)
    return teacher


def make_dataset(
    cfg: DatasetStageConfig,
    env_id: str,
    out: Path,
    env_kwargs: dict | None = None,
    checkpoint_steps: int = 50_000,
) -> Path:
    """Make (or find) the offline dataset; return the path of its ``.npz``.

    Args:
        cfg: Dataset settings; with ``cfg.path`` set, that file is used and nothing is made.
        env_id: Gymnasium id of the env, e.g. ``"Hopper-v5"``.
        out: Folder of this stage (``teacher.zip``, ``dataset.npz``, ``dataset.json``).
        env_kwargs: Extra ``gym.make`` arguments.
        checkpoint_steps: Env steps between the teacher's resumable checkpoints.

    Returns:
        The dataset file.
    """
    if cfg.path is not None:
        return data_file(cfg.path)
    _check_quality(cfg.quality)
    env_kwargs = dict(env_kwargs or {})
    _claim_stage(out, {"env": env_id, "env_kwargs": env_kwargs, **asdict(cfg)})
    if (out / "dataset.npz").exists():  # made before: the folder is not touched
        return out / "dataset.npz"
    with folder_lock(out, wait=True):
        return _make_dataset(cfg, env_id, out, env_kwargs, checkpoint_steps)


def _make_dataset(
    cfg: DatasetStageConfig, env_id: str, out: Path, env_kwargs: dict, checkpoint_steps: int
) -> Path:
    """:func:`make_dataset`'s work, in its locked stage folder."""
    path = out / "dataset.npz"
    if path.exists():
        return path
    start = time.time()
    env = gym.make(env_id, **env_kwargs)
    if cfg.quality == "random":
        policy: Any = random_policy(env.action_space, seed=cfg.seed)
    else:
        policy = _train_teacher(cfg, env_id, env_kwargs, out, checkpoint_steps)
    collected = collect_dataset(
        env, policy, cfg.transitions, deterministic=cfg.deterministic, seed=cfg.seed + 1
    )
    if cfg.minari_id:
        save_minari(collected.dataset, cfg.minari_id, env=env_id, algorithm_name=cfg.teacher)
    summary = {"env": env_id, **asdict(cfg), **collected.summary()}
    summary["seconds"] = round(time.time() - start, 1)
    (out / "dataset.json").write_text(json.dumps(summary, indent=2))
    # Written last, under a temporary name first: a dataset.npz always is a finished one, so
    # an interrupted run redoes the stage instead of loading half a file.
    partial = out / "dataset.partial.npz"
    collected.dataset.save_npz(partial)
    os.replace(partial, path)
    print(
        f"dataset: {len(collected.dataset)} transitions of {env_id} ({cfg.quality}), "
        f"episode return {summary['return_mean']:.0f} ± {summary['return_std']:.0f} "
        f"over {summary['episodes']} episodes -> {path}"
    )
    return path


def behaviour_clone(
    cfg: BCStageConfig,
    dataset: str | os.PathLike[str],
    env_id: str,
    out: Path,
    progress_bar: bool = True,
    action_chunk: int = 1,
    checkpoint_interval: int = 1000,
) -> Path:
    """Behaviour-clone a flow actor on the dataset; return the path of ``bc.pt``.

    The EMA actor is saved with its normalizers (``FlowActor.load`` restores it); TensorBoard
    logs go to ``out/tb`` and a resumable trainer checkpoint to ``out/trainer.ckpt`` every
    ``checkpoint_interval`` steps and on Ctrl-C/SIGTERM: a rerun resumes from it and ends
    with the same weights as an uninterrupted run. With
    ``action_chunk`` Ta > 1 the actor learns chunks of Ta actions (:func:`chunk_actions`), for
    an env wrapped in :class:`~flowrl.envs.ActionChunk`. ``dataset`` is a path or a
    ``pkg://`` one (:func:`data_file`), recorded as given: a shipped dataset names the same
    stage from any working folder and any install.

    Under ``torchrun`` every rank calls it with the same arguments and trains
    (:class:`~flowrl.algos.bc.FlowBC` is data-parallel: ``cfg.train.batch_size`` is the
    global batch, split among the ranks); rank 0 alone checks and claims ``out``, holds its
    lock, resumes from (and writes) the trainer checkpoint, the TensorBoard events,
    ``bc.pt`` and ``bc.json``, and every rank returns once ``bc.pt`` is written. Every rank
    reads the dataset file itself.
    """
    if cfg.kind not in BC_KINDS:
        raise ValueError(f"bc.kind must be one of {sorted(BC_KINDS)}, got {cfg.kind!r}")
    settings = {"env": env_id, "dataset": str(dataset), **asdict(cfg)}
    if cfg.kind == "flow":  # only otherwise, so folders made before bc.kind existed stay valid
        settings.pop("kind")
    if action_chunk > 1:  # only then, so folders made before chunking existed stay valid
        settings["action_chunk"] = action_chunk

    def claim() -> bool:
        _claim_stage(out, settings)
        return (out / "bc.pt").exists()

    if distributed.on_main(claim, "claiming the bc stage folder"):
        return out / "bc.pt"  # made before: the folder is not touched
    # Rank 0 alone writes the folder, so it alone locks it (the others must not wait for it).
    with folder_lock(out, wait=True) if distributed.is_main() else nullcontext():
        return _behaviour_clone(
            cfg, data_file(dataset), env_id, out, progress_bar, action_chunk, checkpoint_interval
        )


def _behaviour_clone(
    cfg: BCStageConfig,
    dataset_path: Path,
    env_id: str,
    out: Path,
    progress_bar: bool,
    action_chunk: int,
    checkpoint_interval: int,
) -> Path:
    """:func:`behaviour_clone`'s work, in its locked stage folder (every rank)."""
    main = distributed.is_main()
    path = out / "bc.pt"
    if distributed.on_main(path.exists, "checking for bc.pt"):  # made while rank 0 waited
        return path
    data = chunk_actions(OfflineDataset.load_npz(dataset_path), action_chunk)
    env = gym.make(env_id)
    if action_chunk > 1:
        env = ActionChunk(env, action_chunk)
    start = time.time()
    ckpt = out / "trainer.ckpt"
    if main:
        (out / "trainer.ckpt.tmp").unlink(missing_ok=True)  # left by a process killed mid-write
    if distributed.on_main(ckpt.exists, "looking for the BC trainer checkpoint"):
        bc = FlowBC.load_checkpoint(ckpt, data)  # read by rank 0, sent to the others
        if main:
            print(f"bc: resuming {ckpt} at step {bc.step}")
    else:
        bc = FlowBC.from_dataset(
            data,
            env=env,
            actor_config=dict(cfg.actor),
            config=cfg.train,
            actor_class=BC_KINDS[cfg.kind],
        )
    bc.learn(  # under torchrun: rank 0 alone writes the events and checkpoints
        tensorboard_log=out / "tb",
        checkpoint_path=ckpt,
        checkpoint_interval=checkpoint_interval,
        progress_bar=progress_bar,
    )
    if main:
        partial = out / "bc.partial.pt"
        bc.actor_ema.save(partial)
        os.replace(partial, path)  # bc.pt appears complete or not at all
        info = {"dataset": str(dataset_path), "seconds": round(time.time() - start, 1)}
        (out / "bc.json").write_text(json.dumps(info, indent=2))
        print(f"bc: {cfg.train.steps} steps in {info['seconds']} s -> {path}")
    distributed.barrier("waiting for rank 0 to write bc.pt")  # then every rank may read it
    return path


# What the explore stage trains (explore.behavior): the learner and its SB3 policy alias.
EXPLORE_BEHAVIORS: dict[str, tuple[type[BaseAlgorithm], str]] = {
    "gaussian": (EDPExplore, "MlpPolicy"),
    "flow": (EDPExploreFlow, "FlowSACPolicy"),
}
# flowrl's PointMaze ids (also in gymnasium's "module:id" form): the maze whose coverage the
# explore stage records.
MAZE_ID = re.compile(r"(?:^|:)flowrl/PointMaze(?:Goal)?-(UMaze|Medium|Large)-v\d+$")
EXPLORE_COVERAGE_FREQ = 1000  # env steps between the coverage rows of explore.json


def maze_of(env_id: str) -> str | None:
    """The maze (``"umaze"``, ``"medium"``, ``"large"``) of a flowrl PointMaze id, else None."""
    match = MAZE_ID.search(env_id)
    return match.group(1).lower() if match else None


def check_explore(cfg: ExploreStageConfig) -> None:
    """Refuse explore settings the stage cannot run, before anything is written.

    Raises:
        ValueError: Naming the setting and what it takes.
    """
    if cfg.behavior not in EXPLORE_BEHAVIORS:
        raise ValueError(
            f"explore.behavior must be one of {sorted(EXPLORE_BEHAVIORS)}, got {cfg.behavior!r}: "
            "gaussian explores with SB3 SAC's MlpPolicy (EDPExplore), flow with a FlowSACPolicy "
            "(EDPExploreFlow)"
        )
    for name, value, low in (
        ("steps", cfg.steps, 1),
        ("learning_starts", cfg.learning_starts, 0),
        ("batch_size", cfg.batch_size, 1),
        ("train_freq", cfg.train_freq, 1),
        ("novelty_updates", cfg.novelty_updates, 1),
        ("actor_updates", cfg.actor_updates, 0),
    ):
        if value < low:
            raise ValueError(f"explore.{name} must be >= {low}, got {value}")
    if cfg.gradient_steps < 1 and cfg.gradient_steps != -1:
        raise ValueError(
            f"explore.gradient_steps must be >= 1 or -1 (as many as env steps), got "
            f"{cfg.gradient_steps}"
        )
    for name, value in (
        ("intrinsic_scale", cfg.intrinsic_scale),
        ("actor_learning_rate", cfg.actor_learning_rate),
    ):
        if not value > 0:
            raise ValueError(f"explore.{name} must be > 0, got {value}")
    if not cfg.net_arch or min(cfg.net_arch) < 1:
        raise ValueError(f"explore.net_arch must be positive widths, got {list(cfg.net_arch)}")
    options = {
        "intrinsic": intrinsic_options()["score"],
        "actor": [
            f.name for f in fields(FlowActorConfig) if f.name not in ("obs_dim", "action_dim")
        ],
    }
    for name, valid in options.items():
        unknown = sorted(set(getattr(cfg, name)) - set(valid))
        if unknown:
            raise ValueError(
                f"explore.{name} has no option {', '.join(unknown)}; its options are "
                f"{', '.join(valid)}"
            )


def explore_pretrain(
    cfg: ExploreStageConfig,
    env_id: str,
    out: Path,
    seed: int = 0,
    env_kwargs: dict | None = None,
    device: str = "cpu",
    progress_bar: bool = True,
    checkpoint_steps: int = 50_000,
    verbose: int = 0,
) -> Path:
    """Explore ``env_id`` without its reward (EDP's pretraining); return the path of π_pre.

    The behaviour policy (``cfg.behavior``) is trained on the score intrinsic reward for
    ``cfg.steps`` env steps while π_pre, a :class:`~flowrl.policies.FlowActor`, is fitted to
    the replay buffer's actions; π_pre is written to ``out/prior.pt`` (complete or not at
    all) and a summary to ``out/explore.json`` (``steps``, ``seconds``; on a flowrl PointMaze
    the final ``cells`` and ``entropy_normalized`` of :class:`~flowrl.callbacks.
    CoverageCallback`, with its rows in ``coverage_history``). TensorBoard logs go to
    ``out/tb``. A resumable training checkpoint (the replay buffer included) is written to
    ``out/checkpoint.pt`` every ``checkpoint_steps`` env steps and on Ctrl-C/SIGTERM; a rerun
    resumes from it. A folder that holds ``prior.pt`` for the same settings is reused as it
    is; one made with other settings is refused (``stage.json``).

    Args:
        cfg: The stage's settings.
        env_id: Gymnasium id of the env explored.
        out: Folder of this stage.
        seed: Seed of the learner and its env.
        env_kwargs: Extra ``gym.make`` arguments.
        device: Torch device of the learner.
        progress_bar: SB3's progress bar.
        checkpoint_steps: Env steps between resumable checkpoints (0: only on interruption).
        verbose: SB3 verbosity.

    Returns:
        The π_pre checkpoint (``out/prior.pt``).
    """
    check_explore(cfg)
    env_kwargs = dict(env_kwargs or {})
    _claim_stage(out, {"env": env_id, "env_kwargs": env_kwargs, "seed": seed, **asdict(cfg)})
    if (out / "prior.pt").exists():  # made before: the folder is not touched
        return out / "prior.pt"
    with folder_lock(out, wait=True):
        return _explore(
            cfg, env_id, out, seed, env_kwargs, device, progress_bar, checkpoint_steps, verbose
        )


def _explore(
    cfg: ExploreStageConfig,
    env_id: str,
    out: Path,
    seed: int,
    env_kwargs: dict,
    device: str,
    progress_bar: bool,
    checkpoint_steps: int,
    verbose: int,
) -> Path:
    """:func:`explore_pretrain`'s work, in its locked stage folder."""
    path = out / "prior.pt"
    if path.exists():
        return path
    for partial in ("prior.partial.pt", "prior.partial.pt.tmp", "explore.json.tmp"):
        (out / partial).unlink(missing_ok=True)  # left by a process killed mid-write
    (out / "checkpoint.pt.tmp").unlink(missing_ok=True)
    learner, policy = EXPLORE_BEHAVIORS[cfg.behavior]
    model = learner(
        policy,
        gym.make(env_id, **env_kwargs),  # a plain env: its reward is dropped before SB3's Monitor
        intrinsic_kwargs=dict(cfg.intrinsic),
        intrinsic_scale=cfg.intrinsic_scale,
        novelty_updates=cfg.novelty_updates,
        actor_config=dict(cfg.actor),
        actor_learning_rate=cfg.actor_learning_rate,
        actor_updates=cfg.actor_updates,
        learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size,
        train_freq=cfg.train_freq,
        gradient_steps=cfg.gradient_steps,
        buffer_size=cfg.steps,
        policy_kwargs={"net_arch": list(cfg.net_arch)},
        tensorboard_log=str(out / "tb"),
        seed=seed,
        device=device,
        verbose=verbose,
    )
    maze = maze_of(env_id)
    coverage = CoverageCallback(maze, EXPLORE_COVERAGE_FREQ, keep_points=False) if maze else None
    timer = {"before": 0.0, "start": time.perf_counter()}  # seconds of earlier sessions, now

    def extra() -> dict[str, Any]:
        seconds = timer["before"] + time.perf_counter() - timer["start"]
        return {"seconds": seconds, "coverage": coverage.state_dict() if coverage else {}}

    ckpt = TrainingCheckpoint(out / "checkpoint.pt", save_freq=checkpoint_steps, extra=extra)
    resumed = ckpt.exists()
    if resumed:
        state = ckpt.resume(model)
        timer["before"] = float(state["extra"].get("seconds", 0.0))
        if coverage is not None:
            coverage.load_state_dict(state["extra"]["coverage"])
        print(f"explore: resuming {ckpt.path} at step {model.num_timesteps}", flush=True)
    if model.num_timesteps < cfg.steps:
        callbacks = [ckpt] if coverage is None else [coverage, ckpt]
        with sigterm_as_interrupt():
            try:
                model.learn(
                    cfg.steps - model.num_timesteps,
                    callback=callbacks,
                    tb_log_name="explore",
                    reset_num_timesteps=not resumed,
                    progress_bar=progress_bar,
                )
            except KeyboardInterrupt:
                if ckpt.save_latest():
                    print(
                        f"\nexplore: interrupted at step {model.num_timesteps}; checkpoint -> "
                        f"{ckpt.path}: rerun the same command to resume",
                        flush=True,
                    )
                raise
        ckpt.write()  # the finished state: a crash while writing the outputs loses nothing
    summary: dict[str, Any] = {
        "env": env_id,
        "behavior": cfg.behavior,
        "steps": int(model.num_timesteps),
        "seconds": round(extra()["seconds"], 1),
    }
    if coverage is not None:
        final = coverage.coverage()
        summary.update(
            maze=maze,
            cells=float(final["cells"]),
            entropy_normalized=float(final["entropy_normalized"]),
            coverage_history=coverage.history,
        )
    # explore.json first (fine-tuning reads it), then prior.pt, each under a temporary name
    # first: prior.pt appears complete or not at all and marks the stage done.
    (out / "explore.json.tmp").write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(out / "explore.json.tmp", out / "explore.json")
    partial = out / "prior.partial.pt"
    model.save_pretrained(partial)
    os.replace(partial, path)
    ckpt.path.unlink(missing_ok=True)
    model.get_env().close()
    covered = f", {summary['cells']:.0%} of the maze's cells" if coverage is not None else ""
    print(
        f"explore: {summary['steps']} env steps of {env_id} in {summary['seconds']} s"
        f"{covered} -> {path}",
        flush=True,
    )
    return path


def dataset_returns(path: Path) -> np.ndarray:
    """Returns of the complete episodes in a dataset file (for the results table)."""
    data = OfflineDataset.load_npz(path)
    if data.rewards is None or data.terminals is None or data.timeouts is None:
        raise ValueError(f"{path} has no rewards/terminals/timeouts: cannot split episodes")
    ends = data.episode_ends()
    sums = np.add.reduceat(data.rewards, np.concatenate([[0], ends[:-1] + 1]))
    return sums.astype(np.float64)
