"""flowrl.callbacks: the learning-curve callback evaluates when asked and records exact returns."""

import csv

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecNormalize

from flowrl.callbacks import LearningCurveCallback

EPISODE = 5


class Steady(gym.Env):
    """Five steps per episode, reward 1 − |a|: a deterministic zero-mean policy scores more
    than the same policy with exploration noise; the observation never changes."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        reward = 1.0 - float(np.abs(np.clip(action, -1, 1)).sum())
        return np.zeros(1, np.float32), reward, self.t >= EPISODE, False, {}


class Capture(KVWriter):
    """Keeps every (key, value, step) SB3's logger writes."""

    def __init__(self):
        self.rows = []

    def write(self, key_values, key_excluded, step=0):
        self.rows.append((dict(key_values), step))


def _venv(n_envs=1, seed=0):
    return make_vec_env(Steady, n_envs=n_envs, seed=seed)


def _ppo(env, seed=0):
    return PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=seed)


def test_rows_at_start_every_freq_and_at_the_end():
    model = _ppo(_venv(n_envs=2))
    capture = Capture()
    model.set_logger(Logger(folder=None, output_formats=[capture]))
    callback = LearningCurveCallback(_venv(seed=100), eval_freq=20, n_eval_episodes=3)
    model.learn(64, callback=callback)

    # 2 envs: the step count moves by 2; evaluations at 0, the first counts ≥ 20, 40, 60, and
    # at the last step (64), which is not a multiple of 20.
    assert [row["timesteps"] for row in callback.curve] == [0, 20, 40, 60, 64]
    for row in callback.curve:
        assert row["length_deterministic_mean"] == row["length_stochastic_mean"] == EPISODE
        # Deterministic policy, fixed observation: every episode returns the same.
        assert row["return_deterministic_std"] == pytest.approx(0.0, abs=1e-5)
        assert row["return_deterministic_mean"] > row["return_stochastic_mean"]
        assert row["return_deterministic_mean"] <= EPISODE
    times = [row["time_s"] for row in callback.curve]
    assert times == sorted(times) and callback.eval_seconds > 0
    assert callback.last == callback.curve[-1]

    logged = [(kv, step) for kv, step in capture.rows if "eval/return_deterministic_mean" in kv]
    assert [step for _, step in logged] == [0, 20, 40, 60, 64]
    first, _ = logged[0]
    assert first["eval/return_deterministic_mean"] == callback.curve[0]["return_deterministic_mean"]
    assert "eval/return_stochastic_std" in first and "eval/length_stochastic_mean" in first


def test_one_mode_and_no_start_row(tmp_path):
    model = _ppo(_venv())
    env = Monitor(Steady())  # a plain gymnasium env is vectorized by the callback
    callback = LearningCurveCallback(
        env, eval_freq=16, n_eval_episodes=2, stochastic=False, evaluate_at_start=False
    )
    model.learn(32, callback=callback)
    assert [row["timesteps"] for row in callback.curve] == [16, 32]
    assert all("return_stochastic_mean" not in row for row in callback.curve)

    callback.save_csv(tmp_path / "curve.csv")
    with open(tmp_path / "curve.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["timesteps"]) for r in rows] == [16, 32]
    assert float(rows[1]["return_deterministic_mean"]) == pytest.approx(
        callback.curve[1]["return_deterministic_mean"]
    )


def test_invalid_arguments_are_refused():
    env = _venv()
    with pytest.raises(ValueError, match="eval_freq"):
        LearningCurveCallback(env, eval_freq=0)
    with pytest.raises(ValueError, match="n_eval_episodes"):
        LearningCurveCallback(env, eval_freq=10, n_eval_episodes=0)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        LearningCurveCallback(env, eval_freq=10, deterministic=False, stochastic=False)
    with pytest.raises(RuntimeError, match="no evaluation yet"):
        _ = LearningCurveCallback(env, eval_freq=10).last


def test_observation_normalization_reaches_the_eval_env():
    train_env = VecNormalize(_venv(), norm_obs=True, norm_reward=False)
    with pytest.raises(ValueError, match="eval env does not"):
        _ppo(train_env).learn(16, callback=LearningCurveCallback(_venv(), eval_freq=16))

    eval_env = VecNormalize(_venv(seed=5), training=False, norm_reward=False)
    model = _ppo(train_env)
    callback = LearningCurveCallback(eval_env, eval_freq=16, n_eval_episodes=1)
    model.learn(32, callback=callback)
    np.testing.assert_array_equal(eval_env.obs_rms.mean, train_env.obs_rms.mean)
    assert eval_env.obs_rms is not train_env.obs_rms


def test_success_rate_where_the_env_reports_it():
    import flowrl.envs  # noqa: F401  (registers MultiGoal-v0)

    class Toward:
        """Walks straight to the goal at (5, 0) from the origin (MultiGoal starts there)."""

        num_timesteps = 0
        logger = Logger(folder=None, output_formats=[Capture()])

        def predict(self, obs, state=None, episode_start=None, deterministic=True):
            return np.tile([1.0, 0.0], (len(obs), 1)).astype(np.float32), None

        def get_env(self):
            return eval_env  # stands in for the training env (no normalization to copy)

    eval_env = make_vec_env("MultiGoal-v0", n_envs=1, seed=0)
    curve = LearningCurveCallback(eval_env, eval_freq=10, n_eval_episodes=3, stochastic=False)
    curve.model = Toward()
    row = curve.evaluate()
    assert row["success_deterministic_rate"] == 1.0  # every episode ends at a goal
    # Envs without the flag get no success key.
    plain = LearningCurveCallback(_venv(), eval_freq=10, n_eval_episodes=2, stochastic=False)
    plain.model = curve.model
    assert not any(k.startswith("success") for k in plain.evaluate())


def test_forward_speed_where_the_env_reports_it():
    class Moving(Steady):
        """Steady, reporting a forward speed of 0.1·t at step t (mean 0.3 over 5 steps)."""

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, reward, terminated, truncated, {"x_velocity": 0.1 * self.t}

    model = _ppo(_venv())
    curve = LearningCurveCallback(
        make_vec_env(Moving, n_envs=2, seed=3), eval_freq=10, n_eval_episodes=4
    )
    curve.model = model
    model.set_logger(Logger(folder=None, output_formats=[Capture()]))
    row = curve.evaluate()
    assert row["x_velocity_deterministic_mean"] == pytest.approx(0.3)
    assert row["x_velocity_stochastic_mean"] == pytest.approx(0.3)
    # Envs without it get no speed key.
    plain = LearningCurveCallback(_venv(), eval_freq=10, n_eval_episodes=2)
    plain.model = model
    assert not any(k.startswith("x_velocity") for k in plain.evaluate())


def test_env_steps_count_the_steps_of_action_chunks():
    from flowrl.envs import ActionChunk

    # Chunks of 2 actions on 5-step episodes: decisions of 2, 2, 1 env steps per episode.
    chunked = make_vec_env(Steady, n_envs=2, seed=0, wrapper_class=lambda e: ActionChunk(e, 2))
    model = _ppo(chunked)
    curve = LearningCurveCallback(
        make_vec_env(Steady, seed=100, wrapper_class=lambda e: ActionChunk(e, 2)),
        eval_freq=6,
        n_eval_episodes=2,
    )
    model.learn(30, callback=curve)  # 2 envs x 16 decisions = 32 decisions
    last = curve.curve[-1]
    assert last["timesteps"] == 32
    # per env 16 decisions = 5 full episodes (3 decisions, 5 steps) + one of 2 steps + 2
    assert last["env_steps"] == 2 * (5 * EPISODE + 2) == 54
    assert curve.curve[0]["env_steps"] == 0
    # episode lengths in env steps: the Monitor sits inside the chunk wrapper
    assert last["length_deterministic_mean"] == EPISODE
    # plain envs: one env step per step
    plain = LearningCurveCallback(_venv(seed=5), eval_freq=8, n_eval_episodes=1)
    _ppo(_venv(n_envs=2)).learn(16, callback=plain)
    assert all(row["env_steps"] == row["timesteps"] for row in plain.curve)


class Snapshots(LearningCurveCallback):
    """Keeps a copy of the policy's parameters at every evaluation, by timesteps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params = {}

    def evaluate(self):
        row = super().evaluate()
        state = self.model.policy.state_dict()
        self.params[row["timesteps"]] = {k: v.detach().clone() for k, v in state.items()}
        return row


def test_best_model_is_the_model_of_the_best_evaluation(tmp_path):
    path = tmp_path / "sub" / "best_model.zip"
    model = _ppo(_venv(n_envs=2))
    callback = Snapshots(_venv(seed=100), eval_freq=16, n_eval_episodes=2, best_model_path=path)
    model.learn(96, callback=callback)

    returns = [row["return_deterministic_mean"] for row in callback.curve]
    best = int(np.argmax(returns))  # the first of equal maxima: ties keep the earlier model
    assert callback.best_return == returns[best]
    assert callback.best_timesteps == callback.curve[best]["timesteps"]
    assert path.is_file() and not (tmp_path / "sub" / "best_model.partial.zip").exists()

    loaded = PPO.load(path, device="cpu")
    expected = callback.params[callback.best_timesteps]
    for name, value in loaded.policy.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # The best evaluation is what the file holds: replaying it scores the best return.
    assert evaluate_policy(loaded, _venv(seed=100), n_eval_episodes=2)[0] == pytest.approx(
        callback.best_return, abs=1e-4
    )

    state = callback.state_dict()
    assert (state["best_return"], state["best_timesteps"]) == (
        callback.best_return,
        callback.best_timesteps,
    )
    resumed = LearningCurveCallback(_venv(), eval_freq=16, best_model_path=path)
    resumed.load_state_dict(state)
    assert (resumed.best_return, resumed.best_timesteps) == (
        callback.best_return,
        callback.best_timesteps,
    )
    # Checkpoints from before best-model keeping lack the keys: no best yet.
    old = {k: v for k, v in state.items() if not k.startswith("best_")}
    resumed.load_state_dict(old)
    assert resumed.best_return is None and resumed.best_timesteps is None


def test_best_of_the_stochastic_policy_when_only_it_is_evaluated(tmp_path):
    model = _ppo(_venv())
    callback = LearningCurveCallback(
        _venv(seed=7),
        eval_freq=16,
        n_eval_episodes=2,
        deterministic=False,
        best_model_path=str(tmp_path / "best.zip"),
    )
    model.learn(48, callback=callback)
    returns = [row["return_stochastic_mean"] for row in callback.curve]
    assert callback.best_return == max(returns)
    assert callback.best_timesteps == callback.curve[int(np.argmax(returns))]["timesteps"]
    assert isinstance(PPO.load(tmp_path / "best.zip").policy, type(model.policy))
    # Without a path the best is still tracked, and nothing is written.
    plain = LearningCurveCallback(_venv(), eval_freq=16, n_eval_episodes=1)
    _ppo(_venv()).learn(16, callback=plain)
    assert plain.best_return == max(r["return_deterministic_mean"] for r in plain.curve)


def test_best_model_path_must_be_a_zip(tmp_path):
    with pytest.raises(ValueError, match=r"best_model_path must name a \.zip"):
        LearningCurveCallback(_venv(), eval_freq=10, best_model_path=tmp_path / "best")
