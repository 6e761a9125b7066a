"""Play a trained model: evaluate it, watch it, or record a video (like RL Zoo's ``enjoy``).

    flowrl-enjoy outputs/train/reinflow/hopper/seed0
    flowrl-enjoy outputs/train/reinflow/hopper/seed0 --both --episodes 10
    flowrl-enjoy outputs/train/reinflow/hopper/seed0/best_model.zip --render
    flowrl-enjoy outputs/train/ppo/hopper/seed0 --video hopper.mp4 --episodes 1
    flowrl-enjoy model.zip --algo sac --env Hopper-v5 --json returns.json
    flowrl-eval outputs/main                  # both modes, 10 episodes, no window or video

(In a clone, ``python experiments/enjoy.py …`` is the same command.) The path is a run folder
of ``flowrl-train`` or a model ``.zip`` in one: the run's ``results.json`` says which
algorithm saved the model and which env it was trained on (the gymnasium id, or an MJX
config's ``eval_id``; its kwargs, time limit and ``action_chunk``), and its
``vecnormalize.pkl``, when there is one, normalizes the observations as in training (loaded
with ``training=False, norm_reward=False``: returns are the env's own rewards); the env is
built as the run's evaluation env was (:func:`flowrl.experiments.train.make_env_stack`). A
model ``.zip`` on its own is played on ``--env``; its algorithm is read from the archive, or
given with ``--algo`` (reinflow, policyflow, ppo, sac). ``--algo`` and ``--env`` override a
run's config too.

Each mode (``--deterministic``, the default, ``--stochastic`` or ``--both``) plays
``--episodes`` episodes from the same seeds with SB3's ``evaluate_policy`` and prints the mean
± std of the return and of the episode length (in env steps); ``--json`` writes them, with
every episode's numbers, to a file.

Watching and recording:

* ``--render`` opens a window (needs a display);
* ``--video out.mp4`` or ``--video out.gif`` records every played episode headless, with
  ``render_mode="rgb_array"``. GIF needs only ``imageio``; MP4 needs ``imageio-ffmpeg``
  (``pip install "flowrl-policies[video]"``). MuJoCo envs render offscreen through EGL or
  OSMesa: without ``MUJOCO_GL`` set and without a display (Linux, no ``$DISPLAY``), this
  script sets ``MUJOCO_GL=egl`` when an EGL context can be made (a GPU driver, or Mesa's
  software EGL: ``apt-get install libegl1 libegl-mesa0``) and ``MUJOCO_GL=osmesa`` otherwise
  (``apt-get install libosmesa6``; PyOpenGL comes with mujoco). Classic-control envs
  (Pendulum-v1, …) draw with pygame instead (``pip install "gymnasium[classic-control]"``).

Security: a model ``.zip`` and ``vecnormalize.pkl`` hold pickled Python objects, which
loading them executes (SB3 and pickle work so); play only files you trust, e.g. your own runs.
The path given on the command line is taken as trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, fields, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

import flowrl.envs  # noqa: F401  (registers flowrl's envs, e.g. MultiGoal-v0)
from flowrl.algos import PolicyFlow, ReinFlow
from flowrl.checkpoints import file_kind
from flowrl.experiments.train import EnvConfig, make_env_stack

ALGOS: dict[str, type[BaseAlgorithm]] = {
    "reinflow": ReinFlow,
    "policyflow": PolicyFlow,
    "ppo": PPO,
    "sac": SAC,
}
# The policy class an archive names (module prefix, class name) -> the algorithm it belongs to.
POLICY_ALGOS = {
    ("flowrl.", "FlowPolicy"): "reinflow",
    ("flowrl.", "PolicyFlowPolicy"): "policyflow",
    ("stable_baselines3.common.policies", "ActorCriticPolicy"): "ppo",
    ("stable_baselines3.sac.", "SACPolicy"): "sac",
}
MODES = {
    "deterministic": ["deterministic"],
    "stochastic": ["stochastic"],
    "both": ["deterministic", "stochastic"],
}
VIDEO_SUFFIXES = (".mp4", ".gif")
# How a headless MuJoCo render is tested: a 8x8 EGL context, in a separate process (the
# backend of this one is fixed once OpenGL is imported).
EGL_PROBE = "from mujoco.egl import GLContext; c = GLContext(8, 8); c.make_current(); c.free()"


@dataclass
class RunSpec:
    """What playing a model takes: the archive, its algorithm and its env.

    Attributes:
        model_path: The SB3 model ``.zip``.
        algo: Algorithm name (a key of :data:`ALGOS`); None: read it from the archive.
        env: The env as ``flowrl-train`` configures it (id, kwargs, time limit,
            ``action_chunk``; an MJX config is played on its ``eval_id``); None: unknown.
        vecnormalize_path: The run's ``vecnormalize.pkl``; None where there is none.
    """

    model_path: Path
    algo: str | None
    env: EnvConfig | None
    vecnormalize_path: Path | None = None

    @property
    def env_id(self) -> str | None:
        """The gymnasium id the model is played on."""
        if self.env is None:
            return None
        return self.env.eval_id or self.env.id


# ---------------------------------------------------------------------- what to play


def resolve_run(
    path: str | os.PathLike[str], algo: str | None = None, env: str | None = None
) -> RunSpec:
    """Find the model, its algorithm and its env from a run folder or a model ``.zip``.

    Args:
        path: A run folder of ``experiments/train.py`` (holding ``model.zip``), or a model
            ``.zip`` (a run folder's ``results.json`` next to it is read too).
        algo: Algorithm name, overriding the run's config.
        env: Gymnasium id, overriding the run's config (its kwargs are then dropped).

    Returns:
        The spec; its ``algo`` is None when neither the config nor ``algo`` names one.

    Raises:
        FileNotFoundError: If ``path`` does not exist or a folder holds no ``model.zip``.
        ValueError: For a file that is not an SB3 model, a ``results.json`` without a config,
            an unknown ``algo``, or when the env is known from neither a config nor ``env``.
    """
    path = Path(path)
    if algo is not None and algo not in ALGOS:
        raise ValueError(f"--algo {algo!r} is not known; choose one of {sorted(ALGOS)}")
    if path.is_dir():
        folder, model_path = path, path / "model.zip"
        if not model_path.is_file():
            raise FileNotFoundError(_no_model_message(folder))
    elif path.is_file():
        folder, model_path = path.parent, path
    else:
        raise FileNotFoundError(f"{path} does not exist: give a run folder or a model .zip")
    check_model_file(model_path)

    config = read_config(folder / "results.json") if (folder / "results.json").is_file() else None
    spec = RunSpec(model_path=model_path, algo=algo, env=None)
    if config is not None:
        spec.algo = algo or config.get("algo", {}).get("name")
        spec.env = env_of_config(config.get("env", {}))
    if env is not None:  # a gymnasium id of the user's: the run's kwargs do not apply
        chunk = 1 if spec.env is None else spec.env.action_chunk
        spec.env = EnvConfig(name=env, id=env, action_chunk=chunk)
    if spec.env is None:
        raise ValueError(
            f"{model_path} has no run config next to it (results.json), so the env is unknown: "
            "pass --env <gymnasium id>, e.g. --env Hopper-v5"
        )
    if (folder / "vecnormalize.pkl").is_file():
        spec.vecnormalize_path = folder / "vecnormalize.pkl"
    return spec


def env_of_config(env_cfg: dict[str, Any]) -> EnvConfig:
    """The :class:`EnvConfig` of a run's resolved config (its ``results.json``).

    Raises:
        ValueError: For an MJX env without an ``eval_id`` (the gymnasium task it reproduces,
            which is what is played), or an env config ``flowrl-train`` would not take.
    """
    if env_cfg.get("vec_env") == "mjx" and not env_cfg.get("eval_id"):
        raise ValueError(
            f"the run's MJX env {env_cfg.get('name')!r} has no eval_id (the gymnasium task "
            "it reproduces): pass --env <gymnasium id>"
        )
    known = {f.name for f in fields(EnvConfig)}
    try:
        return EnvConfig(**{k: v for k, v in env_cfg.items() if k in known})
    except TypeError as err:
        raise ValueError(f"the run's env config {env_cfg} is not complete ({err})") from err


def _no_model_message(folder: Path) -> str:
    """Why a folder has no ``model.zip``, and what to do instead."""
    message = f"{folder} holds no model.zip, so it is not a finished training run"
    if (folder / "best_model.zip").is_file():
        return f"{message}; its best model so far can be played: {folder / 'best_model.zip'}"
    if (folder / "results.json").is_file():
        return (
            f"{message} (its results.json is of a run without the finetune stage; a bc stage's "
            "bc.pt is an actor to fine-tune with pretrained=<bc.pt>, not a model to play)"
        )
    return (
        f"{message}: train.py writes model.zip when training ends (rerun the same train.py "
        "command to resume an interrupted run), or give the path of a model .zip"
    )


def check_model_file(path: Path) -> None:
    """Refuse a file that is not a Stable-Baselines3 model archive, saying what it is.

    Raises:
        ValueError: If ``path`` is not an SB3 ``.zip`` (a torch checkpoint such as flowrl's
            ``bc.pt``, another zip, or no zip at all).
    """
    kind = file_kind(path)
    if kind == "sb3":
        return
    if kind == "torch" or (kind == "other" and path.suffix in (".pt", ".pth")):
        raise ValueError(
            f"{path} is a torch checkpoint (e.g. a flowrl FlowActor saved by the bc stage, "
            "bc.pt), not a trained Stable-Baselines3 model: fine-tune it with "
            f"`flowrl-train pretrained={path}` (or policy_kwargs={{'pretrained': path}} in "
            "Python) and play the run's model.zip"
        )
    if kind == "zip":
        raise ValueError(
            f"{path} is a zip archive but not a Stable-Baselines3 model (no 'data' and "
            "'*.pth' entries): give a run folder or the model.zip that SB3's save wrote"
        )
    raise ValueError(
        f"{path} is not a Stable-Baselines3 model .zip (not a zip archive): give a run "
        "folder or the model.zip that SB3's save wrote"
    )


def read_config(path: Path) -> dict[str, Any]:
    """The resolved config a run's ``results.json`` holds.

    Raises:
        ValueError: If the file is not JSON or holds no ``config`` object, naming it.
    """
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): a damaged results file?") from err
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ValueError(
            f"{path} has no 'config' object, so it is not the results.json of "
            "experiments/train.py: pass --algo and --env, and the path of the model .zip"
        )
    return results["config"]


def algo_from_archive(path: Path) -> str | None:
    """The algorithm whose policy class an SB3 archive names (read as JSON, not unpickled)."""
    with zipfile.ZipFile(path) as archive:
        try:
            data = json.loads(archive.read("data"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    policy = data.get("policy_class") if isinstance(data, dict) else None
    if not isinstance(policy, dict):
        return None
    module = str(policy.get("__module__", ""))
    # The class's own methods are stored as reprs: "<function FlowPolicy.__init__ at 0x…>".
    names = re.findall(r"<function (\w+)\.", " ".join(str(v) for v in policy.values()))
    for (prefix, name), algo in POLICY_ALGOS.items():
        if module.startswith(prefix) and name in names[:1]:
            return algo
    return None


def load_model(spec: RunSpec, device: str = "auto") -> tuple[BaseAlgorithm, str]:
    """Load the model: with the spec's algorithm, the archive's, or each known one in turn.

    Returns:
        The model and its algorithm name.

    Raises:
        ValueError: If no known algorithm loads the archive.
    """
    algo = spec.algo or algo_from_archive(spec.model_path)
    if algo is not None:
        if algo not in ALGOS:
            raise ValueError(f"algorithm {algo!r} is not known; choose one of {sorted(ALGOS)}")
        return ALGOS[algo].load(spec.model_path, device=device), algo
    for name, algo_class in ALGOS.items():
        try:
            model = algo_class.load(spec.model_path, device=device)
        except Exception:  # any failure: not this algorithm's archive
            continue
        if isinstance(model.policy, tuple(algo_class.policy_aliases.values())):
            return model, name
    raise ValueError(
        f"cannot tell which algorithm saved {spec.model_path} (none of {sorted(ALGOS)} loads "
        "it): pass --algo"
    )


# ---------------------------------------------------------------------- rendering


def has_display() -> bool:
    """Whether a window can be opened: on Linux, an X or Wayland display; elsewhere, yes."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def configure_offscreen_gl() -> str | None:
    """Pick MuJoCo's offscreen OpenGL backend where none is set and there is no display.

    Sets ``MUJOCO_GL`` to ``egl`` when an EGL context can be made (tried in a subprocess),
    else to ``osmesa``. A ``MUJOCO_GL`` already set is kept, and so is ``PYOPENGL_PLATFORM``
    (which then decides).

    Returns:
        The backend in use (``MUJOCO_GL``); None where a display is left to glfw.
    """
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if has_display():
        return None
    platform = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    if platform in ("egl", "osmesa"):
        backend = platform
    else:
        probe = subprocess.run(
            [sys.executable, "-c", EGL_PROBE], capture_output=True, timeout=120, check=False
        )
        backend = "egl" if probe.returncode == 0 else "osmesa"
    os.environ["MUJOCO_GL"] = backend
    return backend


class FrameRecorder(gym.Wrapper):
    """Render a frame after every reset and step, one list of frames per episode.

    Args:
        env: An env made with ``render_mode="rgb_array"``.
        episodes: Where the frames go: a new list per episode is appended to it.
    """

    def __init__(self, env: gym.Env, episodes: list[list[np.ndarray]]):
        super().__init__(env)
        self.episodes = episodes

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Reset and start an episode with its first frame."""
        result = self.env.reset(**kwargs)
        self.episodes.append([self._frame()])
        return result

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        """Step and record the frame."""
        result = self.env.step(action)
        self.episodes[-1].append(self._frame())
        return result

    def _frame(self) -> np.ndarray:
        try:
            frame = self.env.render()
        except gym.error.DependencyNotInstalled:
            raise  # its message names the package (pygame for classic control)
        except Exception as err:
            raise RuntimeError(
                f"rendering {self.env.spec.id if self.env.spec else self.env} failed with "
                f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({type(err).__name__}: {err}); "
                "headless MuJoCo renders through EGL (a GPU driver, or Mesa: apt-get install "
                "libegl1 libegl-mesa0; MUJOCO_GL=egl) or OSMesa (apt-get install libosmesa6; "
                "MUJOCO_GL=osmesa)"
            ) from err
        return np.asarray(frame)


def check_video_path(path: Path) -> None:
    """Refuse a video name this script cannot write, before any episode is played.

    Raises:
        ValueError: For a suffix other than ``.mp4`` or ``.gif``, or an MP4 without
            ``imageio-ffmpeg``.
    """
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--video {path}: name an .mp4 or a .gif file")
    if path.suffix.lower() == ".mp4" and find_spec("imageio_ffmpeg") is None:
        raise ValueError(
            f"--video {path}: writing MP4 needs imageio-ffmpeg (pip install "
            '"flowrl-policies[video]" or pip install imageio-ffmpeg); a .gif needs nothing more'
        )


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write ``frames`` (H, W, 3) uint8 as an MP4 or a GIF."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000.0 / fps, loop=0)  # duration: ms per frame
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)


# ---------------------------------------------------------------------- playing


def make_env(
    spec: RunSpec,
    seed: int,
    render_mode: str | None = None,
    max_steps: int | None = None,
    episodes: list[list[np.ndarray]] | None = None,
) -> VecEnv:
    """One evaluation env of the spec, built as ``flowrl-train`` builds its eval env.

    ``Monitor`` inside, the run's ``VecNormalize`` statistics outside (frozen, rewards raw).

    Args:
        spec: The run.
        seed: Seed of the first episode.
        render_mode: ``gymnasium.make``'s render mode.
        max_steps: Time limit in env steps, replacing the run's.
        episodes: Record frames into this list (``render_mode="rgb_array"``).
    """
    assert spec.env is not None  # resolve_run refuses a spec without one
    env_cfg = spec.env if max_steps is None else replace(spec.env, max_episode_steps=max_steps)
    recorder = None if episodes is None else (lambda env: FrameRecorder(env, episodes))
    venv = make_env_stack(env_cfg, 1, seed, False, render_mode, recorder)
    if spec.vecnormalize_path is not None:
        venv = VecNormalize.load(str(spec.vecnormalize_path), venv)
        venv.training = False
        venv.norm_reward = False
    return venv


def _check_spaces(model: BaseAlgorithm, venv: VecEnv, spec: RunSpec) -> None:
    """Refuse an env whose spaces are not the model's (the wrong ``--env``)."""
    for what, ours, theirs in (
        ("observation", venv.observation_space, model.observation_space),
        ("action", venv.action_space, model.action_space),
    ):
        if ours.shape != theirs.shape:
            raise ValueError(
                f"{spec.env_id} has {what} shape {ours.shape} but {spec.model_path} was trained "
                f"on {theirs.shape}: wrong --env (or action_chunk)?"
            )


def enjoy(
    path: str | os.PathLike[str],
    episodes: int = 5,
    mode: str = "deterministic",
    render: bool = False,
    video: str | os.PathLike[str] | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    algo: str | None = None,
    env: str | None = None,
    json_path: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Play a trained model and report its returns (what the command line runs).

    Args:
        path: A run folder or a model ``.zip`` (see the module docstring).
        episodes: Episodes per mode.
        mode: ``deterministic``, ``stochastic`` or ``both``.
        render: Show the episodes in a window.
        video: Record the episodes (of every mode, in turn) into this ``.mp4`` or ``.gif``.
        seed: Seed of the first episode (each mode replays the same seeds).
        max_steps: Time limit per episode in env steps, replacing the run's.
        algo: Algorithm name, for a model without a run config (or to override it).
        env: Gymnasium id, for a model without a run config (or to override it).
        json_path: Also write the report here as JSON.
        device: Torch device of the model.

    Returns:
        The report: model, algo, env, and per mode the mean/std of returns and lengths
        with each episode's; ``video`` (path, frames, size, fps) when one was recorded.

    Raises:
        ValueError: For arguments out of range and files that are not what they should be
            (each message names the file and the fix).
    """
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {max_steps}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not known; choose one of {sorted(MODES)}")
    if render and video is not None:
        raise ValueError("--render and --video exclude each other: watch or record")
    if render and not has_display():
        raise ValueError(
            "--render opens a window, but there is no display ($DISPLAY is unset): record "
            "the episodes with --video out.mp4 (or out.gif) instead"
        )
    video_path = None if video is None else Path(video)
    if video_path is not None:
        check_video_path(video_path)
        configure_offscreen_gl()

    spec = resolve_run(path, algo, env)
    model, spec.algo = load_model(spec, device)
    report: dict[str, Any] = {
        "model": str(spec.model_path),
        "algo": spec.algo,
        "env_id": spec.env_id,
        "vecnormalize": None if spec.vecnormalize_path is None else str(spec.vecnormalize_path),
        "episodes": episodes,
        "seed": seed,
    }
    print(f"{spec.algo} on {spec.env_id}: {spec.model_path}", flush=True)
    render_mode = "human" if render else "rgb_array" if video_path is not None else None
    frames: list[np.ndarray] = []
    fps = 30.0
    for name in MODES[mode]:
        recorded: list[list[np.ndarray]] = []
        venv = make_env(
            spec, seed, render_mode, max_steps, recorded if video_path is not None else None
        )
        try:
            _check_spaces(model, venv, spec)
            returns, lengths = evaluate_policy(
                model,  # type: ignore[arg-type]
                venv,
                n_eval_episodes=episodes,
                deterministic=name == "deterministic",
                return_episode_rewards=True,
            )
            fps = float(venv.get_attr("metadata")[0].get("render_fps") or fps)
        finally:
            venv.close()
        # The vec env resets after the last episode: that start is not played.
        frames += [frame for episode in recorded[:episodes] for frame in episode]
        report[name] = {
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "length_mean": float(np.mean(lengths)),
            "length_std": float(np.std(lengths)),
            "returns": [float(r) for r in returns],
            "lengths": [int(n) for n in lengths],
        }
        row = report[name]
        print(
            f"{name}: return {row['return_mean']:.2f} ± {row['return_std']:.2f}, "
            f"length {row['length_mean']:.1f} ± {row['length_std']:.1f} "
            f"over {episodes} episodes",
            flush=True,
        )
    if video_path is not None:
        write_video(video_path, frames, fps)
        height, width = frames[0].shape[:2]
        report["video"] = {
            "path": str(video_path),
            "frames": len(frames),
            "width": width,
            "height": height,
            "fps": fps,
            "mujoco_gl": os.environ.get("MUJOCO_GL"),
        }
        print(f"video: {video_path} ({len(frames)} frames, {width}x{height}, {fps:g} fps)")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


def parse_args(
    argv: list[str] | None = None, prog: str | None = None, evaluate_only: bool = False
) -> argparse.Namespace:
    """The command line (see the module docstring); ``evaluate_only``: ``flowrl-eval``'s."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Evaluate a trained model of flowrl-train (or any SB3 model .zip) in both policy modes."
            if evaluate_only
            else "Play a trained model of flowrl-train (or any SB3 model .zip): evaluate it, "
            "watch it or record a video."
        ),
        epilog="Model .zip and vecnormalize.pkl files are unpickled: play only files you trust.",
    )
    parser.add_argument("path", help="a run folder (holding model.zip) or a model .zip")
    default_mode = "both" if evaluate_only else "deterministic"
    default_episodes = 10 if evaluate_only else 5
    parser.add_argument(
        "--episodes",
        type=int,
        default=default_episodes,
        help=f"episodes per mode ({default_episodes})",
    )
    modes = parser.add_mutually_exclusive_group()
    for mode, text in (
        ("deterministic", "play predict(deterministic=True)"),
        ("stochastic", "play predict(deterministic=False)"),
        ("both", "play both modes"),
    ):
        default = " (the default)" if mode == default_mode else ""
        modes.add_argument(
            f"--{mode}", dest="mode", action="store_const", const=mode, help=text + default
        )
    if not evaluate_only:
        shown = parser.add_mutually_exclusive_group()
        shown.add_argument("--render", action="store_true", help="show the episodes in a window")
        shown.add_argument(
            "--video", metavar="OUT", help="record the episodes to OUT.mp4 or OUT.gif"
        )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (0)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="time limit per episode in env steps"
    )
    parser.add_argument(
        "--algo", choices=sorted(ALGOS), help="the algorithm (a model .zip without a run config)"
    )
    parser.add_argument("--env", help="gymnasium id (a model .zip without a run config)")
    parser.add_argument("--json", metavar="OUT", help="also write the returns to OUT.json")
    parser.add_argument("--device", default="auto", help="torch device of the model (auto)")
    parser.set_defaults(mode=default_mode, render=False, video=None)
    return parser.parse_args(argv)


def main(
    argv: list[str] | None = None, prog: str | None = None, evaluate_only: bool = False
) -> int:
    """Command-line entry point; a wrong file or argument exits with its message, status 2.

    Args:
        argv: The arguments (None: ``sys.argv[1:]``).
        prog: The command's name in messages (``flowrl-enjoy``, ``flowrl-eval``).
        evaluate_only: ``flowrl-eval``: no window or video; both modes, 10 episodes.
    """
    args = parse_args(argv, prog, evaluate_only)
    try:
        enjoy(
            args.path,
            episodes=args.episodes,
            mode=args.mode,
            render=args.render,
            video=args.video,
            seed=args.seed,
            max_steps=args.max_steps,
            algo=args.algo,
            env=args.env,
            json_path=args.json,
            device=args.device,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"{prog or 'enjoy.py'}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
