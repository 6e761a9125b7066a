"""experiments/enjoy.py: play a run folder or a model .zip, record a video, refuse wrong files."""

import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from flowrl.experiments import train as TRAIN

ENJOY = importlib.import_module("flowrl.experiments.enjoy")
ROOT = Path(__file__).resolve().parents[2]

# TINY_REINFLOW of test_train_configs.py on a MuJoCo task that renders without pygame, with
# short episodes, and a reward normalizer so the run has a vecnormalize.pkl to load.
TINY = [
    "algo=reinflow",
    "env=inverted_pendulum",
    "env.max_episode_steps=20",
    "env.norm_reward=true",
    "total_timesteps=128",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    "policy.num_steps=2",
    "policy.actor.width=16",
    "policy.actor.depth=1",
    "policy.noise_hidden=[8]",
    "policy.value_hidden=[16]",
    "eval.freq=128",
    "eval.episodes=1",
    "progress_bar=false",
    "from_scratch=true",
]
# A 16x16 InvertedPendulum frame, made in a fresh process with the backend enjoy.py picks.
RENDER_PROBE = """
import sys
import gymnasium as gym
from flowrl.experiments import enjoy
enjoy.configure_offscreen_gl()
env = gym.make(sys.argv[1], render_mode="rgb_array", width=16, height=16)
env.reset(seed=0)
assert env.render().std() > 0
env.close()
"""


def headless_env():
    """os.environ without a display or a chosen GL backend (what enjoy.py decides from)."""
    env = dict(os.environ)
    for name in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    return env


@functools.cache
def offscreen_probe(env_id):
    return subprocess.run(
        [sys.executable, "-c", RENDER_PROBE, env_id],
        cwd=ROOT,
        env=headless_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def require_offscreen_mujoco(env_id="InvertedPendulum-v5"):
    probe = offscreen_probe(env_id)
    if probe.returncode != 0:
        pytest.skip(
            "MuJoCo cannot render offscreen here (needs EGL, or OSMesa: apt-get install "
            f"libosmesa6): {probe.stderr.strip().splitlines()[-1:]}"
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("enjoy") / "run"
    TRAIN.train(TRAIN.compose_config(*TINY, f"output_dir={out}"))
    assert (out / "vecnormalize.pkl").is_file()
    return out


@pytest.fixture
def headless(monkeypatch):
    """This process as enjoy.py sees it on a headless machine (restored afterwards)."""
    for name in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)


def check_video(path, frames_expected):
    frames = iio.imread(path, index=None)
    assert frames.ndim == 4 and len(frames) == frames_expected > 1
    for frame in frames:  # a picture, not one colour
        assert len(np.unique(frame.reshape(-1, frame.shape[-1]), axis=0)) > 10
    moved = [not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:], strict=True)]
    assert np.mean(moved) > 0.5  # the pendulum moves from frame to frame
    return frames


def test_run_folder_plays_both_modes_into_a_gif(run, tmp_path, headless):
    require_offscreen_mujoco()
    gif, report_path = tmp_path / "play.gif", tmp_path / "play.json"
    report = ENJOY.enjoy(
        run, episodes=2, mode="both", video=gif, max_steps=6, seed=3, json_path=report_path
    )
    assert report["algo"] == "reinflow" and report["env_id"] == "InvertedPendulum-v5"
    assert report["model"] == str(run / "model.zip")
    assert report["vecnormalize"] == str(run / "vecnormalize.pkl")
    for mode in ("deterministic", "stochastic"):
        row = report[mode]
        assert len(row["returns"]) == len(row["lengths"]) == 2
        assert all(1 <= n <= 6 for n in row["lengths"])  # --max-steps replaces the run's 20
        assert row["return_mean"] == pytest.approx(np.mean(row["returns"]))
    # One frame per step and one per episode start, deterministic episodes first.
    lengths = report["deterministic"]["lengths"] + report["stochastic"]["lengths"]
    check_video(gif, sum(lengths) + len(lengths))
    assert report["video"]["frames"] == sum(lengths) + len(lengths)
    # Headless and unset: enjoy.py chose an offscreen backend for this process.
    assert report["video"]["mujoco_gl"] == os.environ["MUJOCO_GL"] in ("egl", "osmesa")
    assert json.loads(report_path.read_text()) == report
    # The same seed replays the same deterministic episodes.
    again = ENJOY.enjoy(run, episodes=2, max_steps=6, seed=3)
    assert again["deterministic"] == report["deterministic"] and "stochastic" not in again


def command(name):
    """A console command of this environment (installed with the package)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not installed next to {sys.executable}"
    return str(path)


def test_the_command_records_a_model_zip_of_a_run_from_any_folder(run, tmp_path):
    require_offscreen_mujoco()
    gif, report_path = tmp_path / "script.gif", tmp_path / "script.json"
    args = ["--episodes", "1", "--max-steps", "6", "--video", str(gif), "--json", str(report_path)]
    done = subprocess.run(
        [command("flowrl-enjoy"), str(run / "model.zip"), *args],
        cwd=tmp_path,
        env=headless_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "reinflow on InvertedPendulum-v5" in done.stdout
    assert "deterministic: return" in done.stdout and "video: " in done.stdout
    report = json.loads(report_path.read_text())
    check_video(gif, report["deterministic"]["lengths"][0] + 1)
    assert report["video"]["mujoco_gl"] in ("egl", "osmesa")


def test_flowrl_eval_plays_both_modes_and_has_no_window_or_video(run, tmp_path):
    report_path = tmp_path / "eval.json"
    done = subprocess.run(
        [command("flowrl-eval"), str(run), "--episodes", "2", "--max-steps", "5"]
        + ["--json", str(report_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(report_path.read_text())
    assert report["episodes"] == 2 and {"deterministic", "stochastic"} <= set(report)
    assert "video" not in report
    for flag in ("--video", "--render"):
        with pytest.raises(SystemExit) as stop:
            ENJOY.main(
                [str(run), flag, "x.mp4"][: 3 if flag == "--video" else 2], "flowrl-eval", True
            )
        assert stop.value.code == 2
    bc = ENJOY.main([str(tmp_path / "missing")], "flowrl-eval", True)
    assert bc == 2


def test_a_bare_model_zip_needs_the_env_and_the_archive_names_the_algorithm(run, tmp_path):
    bare = tmp_path / "elsewhere" / "policy.zip"
    bare.parent.mkdir()
    shutil.copy(run / "model.zip", bare)
    with pytest.raises(ValueError, match="pass --env <gymnasium id>"):
        ENJOY.enjoy(bare, episodes=1)
    assert ENJOY.algo_from_archive(bare) == "reinflow"
    report = ENJOY.enjoy(bare, episodes=1, env="InvertedPendulum-v5", max_steps=5)
    assert report["algo"] == "reinflow" and report["vecnormalize"] is None
    assert report["deterministic"]["lengths"][0] <= 5
    # The wrong env is refused by its spaces, not by a shape error deep in the policy.
    with pytest.raises(ValueError, match=r"observation shape \(3,\).*wrong --env"):
        ENJOY.enjoy(bare, episodes=1, env="Pendulum-v1")


def test_an_archive_of_no_known_algorithm_asks_for_algo(tmp_path):
    mystery = tmp_path / "model.zip"
    with zipfile.ZipFile(mystery, "w") as archive:
        policy = {"__module__": "elsewhere", "__init__": "<function Mystery.__init__ at 0x0>"}
        archive.writestr("data", json.dumps({"policy_class": policy}))
        archive.writestr("policy.pth", b"")  # an SB3 archive: data and *.pth entries
    assert ENJOY.algo_from_archive(mystery) is None
    with pytest.raises(ValueError, match="cannot tell which algorithm saved .*pass --algo"):
        ENJOY.enjoy(mystery, episodes=1, env="InvertedPendulum-v5")
    with pytest.raises(ValueError, match="--algo 'dqn' is not known"):
        ENJOY.resolve_run(mystery, algo="dqn", env="InvertedPendulum-v5")


def test_folders_without_a_model_are_refused(run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.zip"):
        ENJOY.enjoy(empty)
    shutil.copy(run / "model.zip", empty / "best_model.zip")
    with pytest.raises(FileNotFoundError, match="best model so far can be played: .*best_model"):
        ENJOY.enjoy(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ENJOY.enjoy(tmp_path / "missing")


def test_files_that_are_not_models_say_what_they_are(tmp_path):
    bc = tmp_path / "bc.pt"
    torch.save({"class": "FlowActor", "state_dict": {"w": torch.zeros(2)}}, bc)
    with pytest.raises(ValueError, match="torch checkpoint.*pretrained="):
        ENJOY.enjoy(bc)
    text = tmp_path / "notes.zip"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="not a zip archive"):
        ENJOY.enjoy(text)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="no 'data' and '\\*.pth' entries"):
        ENJOY.enjoy(other)


def test_results_without_a_config_are_refused(run, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(run / "model.zip", folder / "model.zip")
    (folder / "results.json").write_text(json.dumps({"final": {}}))
    with pytest.raises(ValueError, match="has no 'config' object"):
        ENJOY.enjoy(folder)
    (folder / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ENJOY.enjoy(folder / "model.zip")


def test_arguments_are_checked_before_anything_is_played(run, tmp_path, headless, capsys):
    with pytest.raises(ValueError, match="no display"):
        ENJOY.enjoy(run, render=True)
    with pytest.raises(ValueError, match="name an .mp4 or a .gif"):
        ENJOY.enjoy(run, video=tmp_path / "out.avi")
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        ENJOY.enjoy(run, episodes=0)
    assert "MUJOCO_GL" not in os.environ  # nothing chosen for a refused video
    # The command line prints the message and exits with status 2.
    assert ENJOY.main([str(tmp_path / "missing")]) == 2
    assert "enjoy.py: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ENJOY.parse_args([str(run), "--render", "--video", "x.gif"])


@pytest.mark.slow
def test_hopper_video_offscreen(tmp_path, headless):
    require_offscreen_mujoco("Hopper-v5")
    tiny = [o for o in TINY if not o.startswith(("env=", "env.norm_reward"))]
    out = tmp_path / "hopper"
    TRAIN.train(TRAIN.compose_config(*tiny, "env=hopper", f"output_dir={out}"))
    assert (out / "vecnormalize.pkl").is_file()  # the hopper config normalizes rewards
    videos = [tmp_path / "hopper.gif"]
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        videos.append(tmp_path / "hopper.mp4")
    for video in videos:
        report = ENJOY.enjoy(out, episodes=1, video=video, max_steps=8)
        assert report["env_id"] == "Hopper-v5"
        length = report["deterministic"]["lengths"][0]
        frames = check_video(video, length + 1)
        assert frames.shape[1:3] == (480, 480)
