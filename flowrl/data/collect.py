"""Make offline datasets by rolling out a policy in a gymnasium env.

The datasets flowrl's experiments pretrain on are made here, not downloaded: an SB3 teacher
(or any ``obs -> action`` function, or uniform random actions) acts in the env and every
step is recorded in the D4RL layout, with the two ways an episode ends kept apart
(``terminals``: the task ended, e.g. Hopper fell; ``timeouts``: the time limit cut it short),
because value bootstrapping treats them differently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np

from flowrl.data.datasets import OfflineDataset

__all__ = ["CollectedData", "Predictor", "collect_dataset", "random_policy"]


class Predictor(Protocol):
    """Anything with SB3's ``predict(obs, deterministic=...) -> (action, state)``."""

    def predict(self, observation: np.ndarray, deterministic: bool = False) -> tuple[Any, Any]:
        """Action(s) for an observation (SB3 signature; extra arguments optional)."""
        ...


PolicyFn = Callable[[np.ndarray], np.ndarray]
"""A function from one observation (Do,) to one env action (Da,)."""


@dataclass(frozen=True)
class CollectedData:
    """A collected dataset and the returns of the episodes it completed.

    Attributes:
        dataset: Transitions in the D4RL layout, every field present.
        episode_returns: (E,) undiscounted returns of the episodes that ended (terminated
            or truncated) inside the collection; a final unfinished episode is not counted.
        episode_lengths: (E,) lengths of those episodes.
    """

    dataset: OfflineDataset
    episode_returns: np.ndarray
    episode_lengths: np.ndarray

    def summary(self) -> dict[str, float]:
        """Size and return statistics, for logs and result files."""
        returns = self.episode_returns
        return {
            "transitions": len(self.dataset),
            "episodes": int(returns.size),
            "return_mean": float(returns.mean()) if returns.size else float("nan"),
            "return_std": float(returns.std()) if returns.size else float("nan"),
            "return_min": float(returns.min()) if returns.size else float("nan"),
            "return_max": float(returns.max()) if returns.size else float("nan"),
        }


def random_policy(action_space: gymnasium.spaces.Box, seed: int = 0) -> PolicyFn:
    """Uniform random actions in the box (the "random" quality level)."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high
    return lambda obs: rng.uniform(low, high).astype(np.float32)


def _as_policy_fn(policy: Predictor | PolicyFn, deterministic: bool) -> PolicyFn:
    if hasattr(policy, "predict"):
        predictor = policy

        def act(obs: np.ndarray) -> np.ndarray:
            action, _ = predictor.predict(obs, deterministic=deterministic)
            return np.asarray(action)

        return act
    if callable(policy):
        return policy
    raise TypeError(
        f"policy must have SB3's predict(obs, deterministic=...) or be a function obs -> "
        f"action, got {type(policy).__name__}"
    )


def collect_dataset(
    env: gymnasium.Env,
    policy: Predictor | PolicyFn,
    num_transitions: int,
    *,
    deterministic: bool = False,
    seed: int = 0,
) -> CollectedData:
    """Roll ``policy`` out in ``env`` for ``num_transitions`` steps and record them.

    Episodes run back to back; the env is reset with ``seed`` once, then without a seed
    (gymnasium continues the seeded RNG), so a collection is reproducible. Actions are
    clipped into the action box before they are stored and stepped, so the dataset holds
    what the env executed. The last row is marked as a timeout when the collection stops
    inside an episode, so every row belongs to an episode that ends.

    Args:
        env: A gymnasium env with flat Box observations and actions (wrap it in its
            ``TimeLimit``, as ``gymnasium.make`` does, so episodes end).
        policy: An SB3 model (anything with ``predict``) or a function obs (Do,) → action
            (Da,); :func:`random_policy` gives the random quality level.
        num_transitions: N ≥ 1 rows to record.
        deterministic: Passed to ``predict`` (ignored for plain functions). Offline RL
            datasets are usually stochastic rollouts of the teacher.
        seed: Seed of the first reset (and of the action space).

    Returns:
        The dataset (N rows) and the returns and lengths of its finished episodes.

    Raises:
        ValueError: ``num_transitions`` < 1, spaces that are not flat boxes, or an action of
            the wrong shape.
    """
    if num_transitions < 1:
        raise ValueError(f"num_transitions must be >= 1, got {num_transitions}")
    obs_space, act_space = env.observation_space, env.action_space
    for name, space in (("observation", obs_space), ("action", act_space)):
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"collect_dataset needs a flat Box {name} space, got {space}")
    act = _as_policy_fn(policy, deterministic)
    act_space.seed(seed)
    n, do, da = num_transitions, obs_space.shape[0], act_space.shape[0]
    observations = np.empty((n, do), np.float32)
    next_observations = np.empty((n, do), np.float32)
    actions = np.empty((n, da), np.float32)
    rewards = np.empty(n, np.float32)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    returns: list[float] = []
    lengths: list[int] = []

    obs, _ = env.reset(seed=seed)
    episode_return, episode_length = 0.0, 0
    for i in range(n):
        action = np.asarray(act(obs), dtype=np.float32).reshape(-1)
        if action.shape != (da,):
            raise ValueError(f"policy returned an action of shape {action.shape}, need ({da},)")
        action = np.clip(action, act_space.low, act_space.high)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        observations[i], actions[i], next_observations[i] = obs, action, next_obs
        rewards[i], terminals[i] = reward, terminated
        # A step that terminates is a terminal even if the time limit hit at the same step.
        timeouts[i] = truncated and not terminated
        episode_return += float(reward)
        episode_length += 1
        if terminated or truncated:
            returns.append(episode_return)
            lengths.append(episode_length)
            episode_return, episode_length = 0.0, 0
            obs, _ = env.reset()
        else:
            obs = next_obs
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True  # the collection cut the last episode short
    dataset = OfflineDataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        next_observations=next_observations,
        terminals=terminals,
        timeouts=timeouts,
    )
    return CollectedData(dataset, np.array(returns, np.float64), np.array(lengths, np.int64))
