"""flowrl.envs.maze: PointMaze with fixed start and goal, maze coverage, CoverageCallback."""

import json
import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.env_util import make_vec_env

import flowrl.envs  # noqa: F401  (registers the ids)
from flowrl.callbacks import CoverageCallback
from flowrl.envs.maze import (
    DEFAULT_EPISODE_STEPS,
    MAZE_NAMES,
    coverage_from_visits,
    make_point_maze,
    maze_coverage,
    maze_layout,
    plot_visits,
)
from flowrl.metrics import normalized_entropy

IDS = {
    "flowrl/PointMaze-UMaze-v0": ("umaze", "explore"),
    "flowrl/PointMaze-Medium-v0": ("medium", "explore"),
    "flowrl/PointMaze-Large-v0": ("large", "explore"),
    "flowrl/PointMazeGoal-UMaze-v0": ("umaze", "goal"),
    "flowrl/PointMazeGoal-Medium-v0": ("medium", "goal"),
    "flowrl/PointMazeGoal-Large-v0": ("large", "goal"),
}


@pytest.fixture
def robotics():
    """gymnasium-robotics (the optional extra "mazes"): the tests of the envs need it."""
    return pytest.importorskip("gymnasium_robotics")


def _bfs(walls, start):
    distances = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for r, c in frontier:
            for cell in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if walls[cell] == 0 and cell not in distances:
                    distances[cell] = distances[(r, c)] + 1
                    nxt.append(cell)
        frontier = nxt
    return distances


# ---------------------------------------------------------------------------------- layouts


def test_walls_equal_gymnasium_robotics_maps(robotics):
    from gymnasium_robotics.envs.maze import maps

    theirs = {"umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}
    assert set(MAZE_NAMES) == set(theirs)
    for name, their_map in theirs.items():
        layout = maze_layout(name)
        np.testing.assert_array_equal(layout.walls, np.array(their_map), err_msg=name)
        assert layout.walls.dtype.kind == "i"


def test_default_episode_lengths_are_gymnasium_robotics_ones(robotics):
    ids = {"umaze": "PointMaze_UMaze-v3", "medium": "PointMaze_Medium-v3"}
    ids["large"] = "PointMaze_Large-v3"
    for name, env_id in ids.items():
        assert DEFAULT_EPISODE_STEPS[name] == gym.spec(env_id).max_episode_steps


def test_reset_and_goal_cells():
    expected = {"umaze": ((1, 1), (3, 1)), "medium": ((1, 1), (6, 5)), "large": ((1, 1), (7, 10))}
    for name in MAZE_NAMES:
        layout = maze_layout(name)
        assert (layout.reset_cell, layout.goal_cell) == expected[name]
        walls = layout.walls
        assert walls[layout.reset_cell] == 0 and walls[layout.goal_cell] == 0
        assert layout.free_cells == [tuple(c) for c in np.argwhere(walls == 0).tolist()]
        distances = _bfs(walls, layout.reset_cell)
        assert len(distances) == layout.num_free  # every free cell is reachable
        assert distances[layout.goal_cell] == max(distances.values())
        maze_map = layout.maze_map()
        assert maze_map[1][1] == "r" and maze_map[layout.goal_cell[0]][layout.goal_cell[1]] == "g"


def test_unknown_maze_and_task():
    with pytest.raises(ValueError, match=r"'tiny'.*umaze, medium, large"):
        maze_layout("tiny")
    with pytest.raises(ValueError, match=r"'tiny'.*umaze, medium, large"):
        make_point_maze("tiny")
    with pytest.raises(ValueError, match=r"'tiny'"):
        maze_coverage(np.zeros((1, 2)), "tiny")
    with pytest.raises(ValueError, match=r"'race'.*explore, goal"):
        make_point_maze("umaze", task="race")
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_point_maze("umaze", max_episode_steps=0)


def test_coordinates_match_the_env(robotics):
    rng = np.random.default_rng(0)
    for name in MAZE_NAMES:
        layout = maze_layout(name)
        env = make_point_maze(name)
        maze = env.unwrapped.maze
        assert (maze.map_length, maze.map_width) == layout.shape
        cells = [(i, j) for i in range(layout.shape[0]) for j in range(layout.shape[1])]
        for cell in cells:
            np.testing.assert_allclose(layout.cell_xy(cell), maze.cell_rowcol_to_xy(np.array(cell)))
        np.testing.assert_allclose(
            layout.cell_xy(np.array(cells)), [maze.cell_rowcol_to_xy(np.array(c)) for c in cells]
        )
        rows, cols = layout.shape
        xy = rng.uniform([-cols / 2, -rows / 2], [cols / 2, rows / 2], size=(200, 2))
        i, j = layout.cell_of(xy)
        theirs = np.array([maze.cell_xy_to_rowcol(p) for p in xy])
        np.testing.assert_array_equal(np.stack([i, j], axis=1), theirs)
        env.close()


# ---------------------------------------------------------------------------------- envs


def test_reset_lands_in_the_reset_cell_and_xy_is_the_position(robotics):
    for name in MAZE_NAMES:
        layout = maze_layout(name)
        env = make_point_maze(name)
        assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        assert env.action_space.shape == (2,)
        for seed in range(10):
            obs, info = env.reset(seed=seed)
            assert obs.dtype == np.float32 and obs.shape == (4,)
            assert info["xy"].shape == (2,)
            np.testing.assert_array_equal(obs[:2], info["xy"].astype(np.float32))
            i, j = layout.cell_of(info["xy"])
            assert (int(i[0]), int(j[0])) == layout.reset_cell
            assert np.abs(info["xy"] - layout.cell_xy(layout.reset_cell)).max() <= 0.25
            goal = env.unwrapped.goal
            i, j = layout.cell_of(goal)
            assert (int(i[0]), int(j[0])) == layout.goal_cell
            obs, *_, info = env.step(env.action_space.sample())
            np.testing.assert_array_equal(obs[:2], info["xy"].astype(np.float32))
        env.close()


def test_gymnasium_check_env(robotics):
    # Not SB3's check_env: it takes any env whose unwrapped env has compute_reward (PointMaze
    # has) for a goal-conditioned one and then demands dict observations.
    for task in ("explore", "goal"):
        env = make_point_maze("umaze", task=task)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # positions and velocities are unbounded in gymnasium-robotics too; a wrapper is
            # what is checked here
            warnings.filterwarnings("ignore", message=".*(infinity|different from the unwrapped)")
            gym_check_env(env, skip_render_check=True)
        env.close()


def _place_at_goal(env):
    point = env.unwrapped.point_env
    point.data.qpos[:2] = env.unwrapped.goal
    point.data.qvel[:] = 0.0


def test_explore_never_terminates(robotics):
    env = make_point_maze("umaze", task="explore")
    env.reset(seed=0)
    env.action_space.seed(0)
    ends = []
    for _ in range(400):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and "is_success" not in info
        ends.append(truncated)
        if truncated:
            break
    assert len(ends) == 300 and ends[-1] and not any(ends[:-1])
    env.reset(seed=1)
    _place_at_goal(env)  # at the goal: the env's sparse reward, but the episode goes on
    _, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert reward == 1.0 and not terminated and not truncated and info["success"]


def test_goal_task_terminates_at_the_goal(robotics):
    env = make_point_maze("umaze", task="goal")
    _, info = env.reset(seed=0)
    assert info["is_success"] is False
    _, reward, terminated, _, info = env.step(np.zeros(2, np.float32))
    assert reward == 0.0 and not terminated and info["is_success"] is False
    _place_at_goal(env)
    _, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
    assert reward == 1.0 and terminated and not truncated and info["is_success"] is True
    env.close()


def test_registered_ids(robotics):
    for env_id, (name, task) in IDS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == DEFAULT_EPISODE_STEPS[name]
        env = gym.make(env_id)
        assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
        assert env.unwrapped.continuing_task == (task == "explore")
        np.testing.assert_array_equal(env.unwrapped.maze.maze_map, maze_layout(name).maze_map())
        _, info = env.reset(seed=0)
        assert ("is_success" in info) == (task == "goal")
        env.close()
    env = gym.make("flowrl/PointMaze-UMaze-v0", max_episode_steps=5)
    env.reset(seed=0)
    results = [env.step(env.action_space.sample())[2:4] for _ in range(5)]
    assert results == [(False, False)] * 4 + [(False, True)]  # the TimeLimit is enforced
    env.close()


def test_import_does_not_load_gymnasium_robotics():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import flowrl.envs\n"
        "from flowrl.envs.maze import maze_coverage\n"
        "assert 'gymnasium_robotics' not in sys.modules, 'imported'\n"
        "assert maze_coverage(np.array([[-1.0, 1.0]]), 'umaze')['cells'] == 1 / 7\n"
        "sys.modules['gymnasium_robotics'] = None  # as if not installed\n"
        "try:\n"
        "    flowrl.envs.make_point_maze('umaze')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert 'pip install "flowrl-policies[mazes]"' in result.stdout


# ---------------------------------------------------------------------------------- coverage


def test_coverage_of_cell_centres():
    layout = maze_layout("medium")
    n = layout.num_free
    chosen = layout.free_cells[::5]
    k = len(chosen)
    stats = maze_coverage(layout.cell_xy(np.array(chosen)), "medium")
    assert stats["cells"] == pytest.approx(k / n)
    assert stats["entropy"] == pytest.approx(math.log(k))
    assert stats["entropy_normalized"] == pytest.approx(math.log(k) / math.log(n))
    assert stats["wall_visits"] == 0
    expected = np.zeros(layout.shape, np.int64)
    for cell in chosen:
        expected[cell] = 1
    np.testing.assert_array_equal(stats["visits"], expected)


def test_uniform_coverage_and_skewed_coverage():
    layout = maze_layout("large")
    rng = np.random.default_rng(0)
    centres = layout.cell_xy(np.array(layout.free_cells))
    xy = np.repeat(centres, 3, axis=0) + rng.uniform(-0.49, 0.49, size=(3 * layout.num_free, 2))
    stats = maze_coverage(xy, layout)
    assert stats["cells"] == 1.0
    assert stats["entropy_normalized"] == pytest.approx(1.0)
    assert stats["entropy"] == pytest.approx(math.log(layout.num_free))
    skewed = np.concatenate([xy, np.repeat(centres[:1], 50, axis=0)])
    stats = maze_coverage(skewed, "large")
    free = stats["visits"][layout.walls == 0]
    assert stats["entropy_normalized"] == pytest.approx(normalized_entropy(free))
    assert 0.0 < stats["entropy_normalized"] < 1.0 and stats["visits"].sum() == len(skewed)


def test_points_in_walls_and_outside():
    layout = maze_layout("umaze")
    wall_centre = layout.cell_xy((2, 1))  # a wall inside the U
    outside = np.array([[2.6, 0.0], [-9.0, -9.0]])  # beyond the outer walls: clipped onto them
    xy = np.concatenate([wall_centre[None], outside, layout.cell_xy(np.array([(1, 1), (1, 1)]))])
    stats = maze_coverage(xy, "umaze")
    assert stats["wall_visits"] == 3
    assert stats["visits"].sum() == 2 and stats["visits"][1, 1] == 2
    assert stats["cells"] == pytest.approx(1 / 7) and stats["entropy"] == 0.0
    assert stats["entropy_normalized"] == 0.0
    i, j = layout.cell_of(outside)
    np.testing.assert_array_equal(i, [2, 4])
    np.testing.assert_array_equal(j, [4, 0])


def test_empty_and_bad_input():
    stats = maze_coverage(np.zeros((0, 2)), "umaze")
    assert (stats["cells"], stats["entropy"], stats["entropy_normalized"]) == (0.0, 0.0, 0.0)
    assert stats["visits"].sum() == 0 and stats["wall_visits"] == 0
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        maze_coverage(np.zeros((4, 3)), "umaze")
    with pytest.raises(ValueError, match="shape"):
        coverage_from_visits(np.zeros((3, 3)), "umaze")


def test_plot_visits(tmp_path):
    layout = maze_layout("medium")
    xy = layout.cell_xy(np.array(layout.free_cells))
    path = plot_visits(xy, "medium", tmp_path / "sub" / "visits.png")
    assert path == tmp_path / "sub" / "visits.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_visits(np.zeros((0, 2)), layout, tmp_path / "empty.png", title="none").exists()


# ---------------------------------------------------------------------------------- callback


class RecordSteps(gym.Wrapper):
    """Keeps the position after every step (not after resets)."""

    def reset(self, **kwargs):
        self.seen = getattr(self, "seen", [])
        return self.env.reset(**kwargs)

    def step(self, action):
        result = self.env.step(action)
        self.seen.append(result[-1]["xy"].copy())
        return result


def test_coverage_callback_with_sac(robotics, tmp_path):
    venv = make_vec_env(
        "flowrl/PointMaze-UMaze-v0",
        n_envs=2,
        seed=0,
        env_kwargs={"max_episode_steps": 40},  # episodes end: auto-resets inside the run
        wrapper_class=RecordSteps,
    )
    model = SAC("MlpPolicy", venv, learning_starts=1000, seed=0)
    coverage = CoverageCallback("umaze", log_freq=100)
    light = CoverageCallback(maze_layout("umaze"), log_freq=100, keep_points=False)
    model.learn(300, callback=CallbackList([coverage, light]))
    assert [row["timesteps"] for row in coverage.history] == [100, 200, 300]
    assert coverage.history == light.history
    assert list(coverage.history[0]) == ["timesteps", "cells", "entropy", "entropy_normalized"]
    cells = [row["cells"] for row in coverage.history]
    assert cells == sorted(cells) and 0.0 < cells[0] <= 1.0

    points = coverage.points()
    assert points.shape == (300, 2) and coverage.num_points == light.num_points == 300
    for i, env in enumerate(venv.envs):  # env i's steps, interleaved in step order
        seen = np.array(env.get_wrapper_attr("seen"))
        np.testing.assert_array_equal(points[i::2], seen)
    now, expected = coverage.coverage(), maze_coverage(points, "umaze")
    for key in ("cells", "entropy", "entropy_normalized", "wall_visits"):
        assert now[key] == expected[key] == light.coverage()[key]
    np.testing.assert_array_equal(now["visits"], expected["visits"])
    assert coverage.history[-1]["cells"] == now["cells"]
    assert model.logger.name_to_value.get("coverage/cells", now["cells"]) == now["cells"]
    with pytest.raises(RuntimeError, match="keep_points"):
        light.points()

    coverage.save_json(tmp_path / "coverage.json")
    saved = json.loads((tmp_path / "coverage.json").read_text())
    assert saved["maze"] == "umaze" and saved["num_free_cells"] == 7
    assert saved["history"] == coverage.history


def test_coverage_callback_final_row_between_log_points(robotics):
    model = SAC(
        "MlpPolicy", make_vec_env("flowrl/PointMaze-UMaze-v0", n_envs=1), learning_starts=99
    )
    coverage = CoverageCallback("umaze", log_freq=40)
    model.learn(50, callback=coverage)
    assert [row["timesteps"] for row in coverage.history] == [40, 50]
    assert coverage.num_points == 50


def test_coverage_callback_needs_xy_in_info():
    model = SAC("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1), learning_starts=100)
    with pytest.raises(KeyError, match=r'info\["xy"\]'):
        model.learn(4, callback=CoverageCallback("umaze", log_freq=10))
    with pytest.raises(ValueError, match="'tiny'"):
        CoverageCallback("tiny")
    with pytest.raises(ValueError, match="log_freq"):
        CoverageCallback("umaze", log_freq=0)
