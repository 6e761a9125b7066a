import importlib
import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

envs = importlib.import_module("flowrl.envs")  # by name: isort cannot see envs/ → flowrl.envs
multigoal = importlib.import_module("flowrl.envs.multigoal")
GOALS = multigoal.GOALS
MultiGoalEnv = multigoal.MultiGoalEnv
goal_coverage = multigoal.goal_coverage


def test_import_registers_the_id():
    spec = gymnasium.spec("MultiGoal-v0")
    assert spec.entry_point == "flowrl.envs.multigoal:MultiGoalEnv"
    assert spec.max_episode_steps == 30
    assert envs.MultiGoalEnv is MultiGoalEnv and envs.goal_coverage is goal_coverage


def test_reimport_and_reload_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(envs)
        importlib.import_module("flowrl.envs")
    assert gymnasium.spec("MultiGoal-v0").max_episode_steps == 30


def test_make_and_spaces():
    env = gymnasium.make("MultiGoal-v0")
    assert isinstance(env.unwrapped, MultiGoalEnv)
    assert env.observation_space == gymnasium.spaces.Box(-7, 7, (2,), np.float32)
    assert env.action_space == gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    assert GOALS.shape == (4, 2) and GOALS.dtype == np.float32
    np.testing.assert_array_equal(GOALS, [[5, 0], [-5, 0], [0, 5], [0, -5]])
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (2,)
    assert info["goal_reached"] == -1
    env.close()


def test_gymnasium_check_env():
    env = gymnasium.make("MultiGoal-v0", render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)  # unwrapped: check_env warns on wrappers otherwise
    env.close()


def test_sb3_check_env():
    env = gymnasium.make("MultiGoal-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env)
    env.close()


def test_truncates_at_step_30_with_zero_actions():
    env = gymnasium.make("MultiGoal-v0")
    env.reset(seed=0)
    env.unwrapped.pos = np.zeros(2)
    for t in range(1, 31):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated
        assert truncated == (t == 30), t
        np.testing.assert_array_equal(obs, [0, 0])
        # At the origin with zero action: -(30·0 + 1·5²) = -25.
        assert reward == -25.0
        assert info == {"goal_reached": -1, "distance_to_nearest_goal": 5.0, "is_success": False}
    env.close()


def test_reward_arithmetic_without_goal():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([1.0, 2.0])
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.25], np.float32))
    # New position (1.5, 1.75). Nearest goal (0, 5): 1.5² + 3.25² = 2.25 + 10.5625 = 12.8125
    # ((5, 0): 3.5² + 1.75² = 15.3125). |a|² = 0.25 + 0.0625 = 0.3125.
    # reward = -(30·0.3125 + 1·12.8125) = -(9.375 + 12.8125) = -22.1875.
    np.testing.assert_array_equal(obs, [1.5, 1.75])
    assert reward == pytest.approx(-22.1875, abs=1e-12)
    assert not terminated and not truncated
    assert info["goal_reached"] == -1
    assert info["distance_to_nearest_goal"] == pytest.approx(np.sqrt(12.8125), abs=1e-12)


def test_reward_arithmetic_with_goal_bonus_and_termination():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([3.75, 0.0])
    obs, reward, terminated, truncated, info = env.step(np.array([1.0, 0.5], np.float32))
    # New position (4.75, 0.5); nearest goal (5, 0): 0.25² + 0.5² = 0.0625 + 0.25 = 0.3125,
    # distance 0.559 < 1 → bonus. |a|² = 1 + 0.25 = 1.25.
    # reward = -(30·1.25 + 1·0.3125) + 10 = -(37.5 + 0.3125) + 10 = -27.8125.
    np.testing.assert_array_equal(obs, [4.75, 0.5])
    assert reward == pytest.approx(-27.8125, abs=1e-12)
    assert terminated is True and truncated is False
    assert info["goal_reached"] == 0 and info["is_success"]
    assert info["distance_to_nearest_goal"] == pytest.approx(np.sqrt(0.3125), abs=1e-12)


def test_kwargs_change_the_reward():
    env = MultiGoalEnv(
        action_cost=2.0, distance_cost=0.5, goal_reward=4.0, goal_threshold=2.0, reward_scale=0.1
    )
    env.reset(seed=0)
    env.pos = np.array([0.0, -3.0])
    _, reward, terminated, _, info = env.step(np.array([0.0, -0.5], np.float32))
    # New position (0, -3.5), goal (0, -5) at distance 1.5 < 2 → bonus.
    # reward = 0.1·(-(2·0.25 + 0.5·2.25) + 4) = 0.1·(-(0.5 + 1.125) + 4) = 0.1·2.375 = 0.2375.
    assert reward == pytest.approx(0.2375, abs=1e-12)
    assert terminated and info["goal_reached"] == 3


def test_each_goal_is_reported_by_index():
    env = MultiGoalEnv()
    for index, goal in enumerate(GOALS):
        env.reset(seed=0)
        env.pos = goal * 0.9  # 0.5 from the goal
        _, _, terminated, _, info = env.step(np.zeros(2, np.float32))
        assert terminated and info["goal_reached"] == index


def test_action_is_clipped():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([0.0, 0.0])
    obs, reward, *_ = env.step(np.array([3.0, 0.0], np.float32))
    np.testing.assert_array_equal(obs, [1.0, 0.0])
    # The cost uses the clipped action: -(30·1 + 1·4²) = -46.
    assert reward == -46.0
    obs, *_ = env.step(np.array([-0.5, -2.0], np.float32))
    np.testing.assert_array_equal(obs, [0.5, -1.0])


def test_position_is_clipped_at_the_walls():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([6.5, -6.75])
    obs, *_ = env.step(np.array([1.0, -1.0], np.float32))
    np.testing.assert_array_equal(obs, [7.0, -7.0])
    obs, *_ = env.step(np.array([1.0, -1.0], np.float32))
    np.testing.assert_array_equal(obs, [7.0, -7.0])
    assert env.observation_space.contains(obs)
    env.pos = np.array([-6.2, 6.9])
    obs, *_ = env.step(np.array([-1.0, 1.0], np.float32))
    np.testing.assert_array_equal(obs, [-7.0, 7.0])


def test_seeding():
    env = MultiGoalEnv()
    a, _ = env.reset(seed=123)
    b, _ = env.reset(seed=123)
    c, _ = env.reset(seed=124)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Unseeded resets continue the seeded stream, so they differ from one another.
    d, _ = env.reset()
    e, _ = env.reset()
    assert not np.array_equal(d, e)
    # Starts are N(0, 0.1²) around the origin.
    starts = np.stack([env.reset(seed=s)[0] for s in range(400)])
    assert np.all(np.abs(starts.mean(axis=0)) < 0.03)
    assert np.all(np.abs(starts.std(axis=0) - 0.1) < 0.02)


def test_render_rgb_array():
    env = MultiGoalEnv(render_mode="rgb_array")
    env.reset(seed=0)
    env.step(np.array([1.0, 0.0], np.float32))
    image = env.render()
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert (image == (210, 40, 40)).all(axis=-1).any()  # the point mass
    assert (image == (120, 200, 120)).all(axis=-1).any()  # the goals
    assert MultiGoalEnv().render() is None


def test_goal_coverage():
    positions = np.array(
        [
            [5.0, 0.0],  # goal 0
            [4.5, 0.5],  # goal 0 (0.707 away)
            [-5.5, 0.0],  # goal 1
            [0.0, 4.1],  # goal 2 (0.9 away)
            [0.0, 3.5],  # nowhere: 1.5 from goal 2
            [0.0, 0.0],  # nowhere
            [5.0, 1.0],  # nowhere: exactly 1.0 from goal 0, the threshold is strict
        ],
        dtype=np.float32,
    )
    counts = goal_coverage(positions)
    assert counts.shape == (4,) and counts.dtype.kind == "i"
    np.testing.assert_array_equal(counts, [2, 1, 1, 0])
    np.testing.assert_array_equal(goal_coverage(positions, threshold=2.0), [3, 1, 2, 0])
    np.testing.assert_array_equal(goal_coverage(np.zeros((0, 2))), [0, 0, 0, 0])
    np.testing.assert_array_equal(goal_coverage(positions[None]), [2, 1, 1, 0])


def test_goal_coverage_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        goal_coverage(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        goal_coverage(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="threshold"):
        goal_coverage(np.zeros((1, 2)), threshold=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"action_cost": -1.0}, "action_cost"),
        ({"distance_cost": -0.5}, "distance_cost"),
        ({"goal_reward": -10.0}, "goal_reward"),
        ({"goal_threshold": 0.0}, "goal_threshold"),
        ({"goal_threshold": -1.0}, "goal_threshold"),
        ({"reward_scale": 0.0}, "reward_scale"),
        ({"init_sigma": -0.1}, "init_sigma"),
        ({"action_cost": float("nan")}, "finite"),
        ({"distance_cost": float("inf")}, "finite"),
        ({"goal_reward": "ten"}, "number"),
        ({"goal_threshold": None}, "number"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_kwargs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiGoalEnv(**kwargs)
    if "render_mode" not in kwargs:  # make() swaps "human" for its HumanRendering wrapper
        with pytest.raises(ValueError, match=match):
            gymnasium.make("MultiGoal-v0", **kwargs)


def test_bad_action_and_position_raise():
    env = MultiGoalEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="action"):
        env.step(np.array([np.nan, 0.0], np.float32))
    with pytest.raises(ValueError, match="pos"):
        env.pos = np.zeros(3)


def test_goal_layout():
    np.testing.assert_array_equal(multigoal.goal_layout(4), GOALS)
    six = multigoal.goal_layout(6)
    assert six.shape == (6, 2) and six.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(six, axis=1), 5.0, rtol=1e-6)
    np.testing.assert_allclose(six[0], [5.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(six[1], [2.5, 5.0 * np.sqrt(3) / 2], atol=1e-5)  # 60 degrees
    for bad in (1, 0, 2.5, True, "6"):
        with pytest.raises(ValueError, match="num_goals"):
            multigoal.goal_layout(bad)


def test_six_goal_variant_reaches_each_goal_and_counts_coverage():
    env = gymnasium.make("MultiGoal-v0", num_goals=6)
    goals = env.unwrapped.goals
    assert env.unwrapped.num_goals == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb3_check_env(env)
    finals = []
    for index, goal in enumerate(goals):
        env.reset(seed=index)
        env.unwrapped.pos = goal * 0.7
        for _ in range(10):
            step = np.clip(goal - env.unwrapped.pos, -1, 1)
            _, reward, terminated, _, info = env.step(step)
            if terminated:
                break
        assert terminated and info["goal_reached"] == index
        finals.append(env.unwrapped.pos)
    np.testing.assert_array_equal(goal_coverage(np.array(finals), goals=goals), [1] * 6)
    assert env.render() is None
    with pytest.raises(ValueError, match="goals"):
        goal_coverage(np.zeros((1, 2)), goals=np.zeros((3,)))
