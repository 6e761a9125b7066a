"""MultiGoal-v0: the multi-goal point-mass task of Haarnoja et al. (2017).

A 2-D point mass starts near the origin and moves by a velocity step each turn. Four goals sit
at (5, 0), (-5, 0), (0, 5) and (0, -5); reaching any of them ends the episode with a bonus.
The reward is symmetric in the four goals, so an optimal stochastic policy is multimodal: a
flow or diffusion policy can reach all four goals, where a unimodal Gaussian policy settles on
one. :func:`goal_coverage` counts how many final positions landed at each goal.

``num_goals`` (an argument of the env, e.g. ``gymnasium.make("MultiGoal-v0", num_goals=6)``)
places n ≠ 4 goals evenly on the circle of radius 5 around the origin (:func:`goal_layout`);
4 is the paper's layout.

Reference: T. Haarnoja, H. Tang, P. Abbeel, S. Levine, "Reinforcement Learning with Deep
Energy-Based Policies", ICML 2017 (the multi-goal toy task).
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

GOALS = np.array([(5.0, 0.0), (-5.0, 0.0), (0.0, 5.0), (0.0, -5.0)], dtype=np.float32)
"""(4, 2) float32 goal positions; the index of a row is the goal's index in ``info``."""

GOAL_RADIUS = 5.0
"""Distance of every goal from the origin."""

BOUND = 7.0
"""Half-width of the square arena: positions live in [-7, 7]^2."""

_IMAGE_SIZE = 128
_AGENT_RADIUS = 0.25
_MAX_PATH = 1000  # positions kept for rendering


def _number(name: str, value: Any, *, positive: bool) -> float:
    """Returns ``value`` as a finite float, or raises ValueError naming the argument."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got the bool {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number, got {value!r}") from error
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if not positive and number < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def goal_layout(num_goals: int = 4) -> np.ndarray:
    """The (n, 2) float32 goal positions of a MultiGoal env with ``num_goals`` goals.

    4 gives :data:`GOALS` (the paper's order); any other n >= 2 puts goal k at angle 2πk/n on
    the circle of radius :data:`GOAL_RADIUS` (goal 0 at (5, 0), counter-clockwise).

    Raises:
        ValueError: ``num_goals`` is not an int >= 2.
    """
    if isinstance(num_goals, bool) or not isinstance(num_goals, int | np.integer):
        raise ValueError(f"num_goals must be an int >= 2, got {num_goals!r}")
    if num_goals < 2:
        raise ValueError(f"num_goals must be >= 2, got {num_goals}")
    if num_goals == 4:
        return GOALS.copy()
    angles = 2 * np.pi * np.arange(num_goals) / num_goals
    goals = GOAL_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return goals.astype(np.float32)


def _nearest_goal(
    positions: np.ndarray, goals: np.ndarray = GOALS
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the nearest goal's index and squared distance for (N, 2) positions."""
    deltas = positions[:, None, :].astype(np.float64) - goals[None, :, :].astype(np.float64)
    squared = np.sum(deltas * deltas, axis=-1)  # (N, n_goals)
    index = np.argmin(squared, axis=-1)
    return index, squared[np.arange(len(positions)), index]


def goal_coverage(
    final_positions: np.ndarray, threshold: float = 1.0, goals: np.ndarray = GOALS
) -> np.ndarray:
    """Counts the final positions that ended within ``threshold`` of each goal.

    Each position is assigned to its nearest goal (as ``info["goal_reached"]`` does) and counted
    there when its distance is strictly below ``threshold``; positions far from every goal are
    not counted. A policy that reaches all four goals has every count above zero.

    Args:
        final_positions: (N, 2) positions, e.g. the last observation of N episodes; any shape
            (..., 2) is flattened to (N, 2).
        threshold: Distance below which a position counts as at a goal (the env's
            ``goal_threshold``, 1.0 by default).
        goals: (n, 2) goal positions (an env's ``goals``); the paper's four by default.

    Returns:
        (n,) int64 counts, ordered as ``goals``.

    Raises:
        ValueError: ``final_positions`` is not (..., 2), holds NaN/inf, or ``threshold`` is not
            a positive finite number.
    """
    threshold = _number("threshold", threshold, positive=True)
    positions = np.asarray(final_positions, dtype=np.float64)
    if positions.ndim == 0 or positions.shape[-1] != 2:
        raise ValueError(
            f"final_positions must have shape (N, 2), got {positions.shape}; "
            "pass one (x, y) row per episode"
        )
    positions = positions.reshape(-1, 2)
    if not np.all(np.isfinite(positions)):
        raise ValueError("final_positions holds NaN or inf")
    goals = np.asarray(goals, dtype=np.float32)
    if goals.ndim != 2 or goals.shape[1] != 2 or len(goals) == 0:
        raise ValueError(f"goals must have shape (n, 2), got {goals.shape}")
    counts = np.zeros(len(goals), dtype=np.int64)
    if len(positions) == 0:
        return counts
    index, squared = _nearest_goal(positions, goals)
    reached = np.sqrt(squared) < threshold
    np.add.at(counts, index[reached], 1)
    return counts


class MultiGoalEnv(gym.Env[np.ndarray, np.ndarray]):
    """A 2-D point mass rewarded for reaching any of several goals (four by default).

    Observation: the position (x, y), float32, in ``Box(-7, 7, (2,))``. Action: a velocity step
    in ``Box(-1, 1, (2,))``; larger actions are clipped to [-1, 1] per coordinate. Dynamics are
    deterministic: ``pos <- clip(pos + a, -7, 7)``. The start is drawn from
    N(0, init_sigma^2 I) with the env's ``np_random`` and clipped to the box.

    Reward, with ``d`` the distance from the new position to the nearest goal::

        reward_scale * (-(action_cost * |a|^2 + distance_cost * d^2)
                        + goal_reward * [d < goal_threshold])

    The episode terminates when a goal is reached (``d < goal_threshold``); it is never
    truncated by the env itself: ``MultiGoal-v0`` is registered with ``max_episode_steps=30``.

    ``info`` holds ``"goal_reached"`` (index into ``goals`` of the goal reached on this
    step, or -1; always -1 after reset), ``"distance_to_nearest_goal"`` (``d``) and
    ``"is_success"`` (a goal was reached on this step).

    With ``render_mode="rgb_array"``, :meth:`render` draws a small numpy image: the arena,
    goal discs of radius ``goal_threshold``, the path since reset and the point mass.

    Args:
        action_cost: Weight of the squared action norm (>= 0; 30 in the paper).
        distance_cost: Weight of the squared distance to the nearest goal (>= 0).
        goal_reward: Bonus for reaching a goal (>= 0).
        goal_threshold: Distance to a goal below which it counts as reached (> 0).
        reward_scale: Multiplies the whole reward (> 0). The default rewards reach about
            -60 per step; a small scale (e.g. 0.01-0.1) keeps returns O(1), which makes
            PPO-style learners with value functions and advantage normalisation happier.
        init_sigma: Standard deviation of the initial position around the origin (>= 0).
        num_goals: Number of goals (>= 2): 4 is the paper's layout, others lie evenly on
            the circle of radius 5 (:func:`goal_layout`). The env's ``goals`` holds them.
        render_mode: None or ``"rgb_array"``.

    Raises:
        ValueError: An argument is negative, zero where it must be positive, not finite,
            ``num_goals`` is not an int >= 2, or ``render_mode`` is unknown.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        action_cost: float = 30.0,
        distance_cost: float = 1.0,
        goal_reward: float = 10.0,
        goal_threshold: float = 1.0,
        reward_scale: float = 1.0,
        init_sigma: float = 0.1,
        num_goals: int = 4,
        render_mode: str | None = None,
    ) -> None:
        self.action_cost = _number("action_cost", action_cost, positive=False)
        self.distance_cost = _number("distance_cost", distance_cost, positive=False)
        self.goal_reward = _number("goal_reward", goal_reward, positive=False)
        self.goal_threshold = _number("goal_threshold", goal_threshold, positive=True)
        self.reward_scale = _number("reward_scale", reward_scale, positive=True)
        self.init_sigma = _number("init_sigma", init_sigma, positive=False)
        self.goals = goal_layout(num_goals)
        self.num_goals = len(self.goals)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-BOUND, BOUND, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2, dtype=np.float32)
        self._path: list[np.ndarray] = [self._pos.copy()]

    @property
    def pos(self) -> np.ndarray:
        """The current (2,) float32 position (a copy); assign to place the point mass.

        Assigned values are clipped to the arena, e.g. to start a test from a known state.
        """
        return self._pos.copy()

    @pos.setter
    def pos(self, value: np.ndarray) -> None:
        position = np.asarray(value, dtype=np.float32)
        if position.shape != (2,) or not np.all(np.isfinite(position)):
            raise ValueError(f"pos must be a finite (2,) array, got {value!r}")
        self._pos = np.clip(position, -BOUND, BOUND).astype(np.float32)
        self._path = [self._pos.copy()]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Places the point mass near the origin.

        Args:
            seed: Seeds ``np_random`` (the only source of randomness) when given.
            options: Unused; accepted for the gymnasium API.

        Returns:
            The (2,) float32 start position and an info dict (``goal_reached`` = -1 and
            ``distance_to_nearest_goal``).
        """
        super().reset(seed=seed)
        start = self.np_random.normal(0.0, self.init_sigma, size=2)
        self.pos = start
        _, squared = _nearest_goal(self._pos[None], self.goals)
        return self._pos.copy(), self._info(-1, math.sqrt(float(squared[0])))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Moves the point mass by the clipped action.

        Args:
            action: (2,) velocity step; clipped to [-1, 1] per coordinate.

        Returns:
            ``(observation, reward, terminated, truncated, info)``: the new float32 position,
            the reward of the class docstring, whether a goal was reached, False, and the info
            dict.

        Raises:
            ValueError: ``action`` is not a finite (2,) array.
        """
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be a finite (2,) array, got {action!r}")
        a = np.clip(a, -1.0, 1.0)
        self._pos = np.clip(self._pos + a, -BOUND, BOUND).astype(np.float32)
        self._path.append(self._pos.copy())
        if len(self._path) > _MAX_PATH:
            del self._path[0]

        index, squared = _nearest_goal(self._pos[None], self.goals)
        distance = math.sqrt(float(squared[0]))
        reached = distance < self.goal_threshold
        a64 = a.astype(np.float64)
        cost = self.action_cost * float(a64 @ a64) + self.distance_cost * float(squared[0])
        reward = -cost + (self.goal_reward if reached else 0.0)
        goal = int(index[0]) if reached else -1
        info = self._info(goal, distance)
        return self._pos.copy(), self.reward_scale * reward, reached, False, info

    @staticmethod
    def _info(goal: int, distance: float) -> dict[str, Any]:
        """Returns the info dict: goal reached (or -1), nearest-goal distance, is_success.

        ``is_success`` (a goal was reached) is the key SB3's evaluation tools read.
        """
        return {
            "goal_reached": goal,
            "distance_to_nearest_goal": distance,
            "is_success": goal >= 0,
        }

    def render(self) -> np.ndarray | None:
        """Draws the arena with numpy only.

        Returns:
            A (128, 128, 3) uint8 image when ``render_mode="rgb_array"`` (x to the right,
            y upwards), else None.
        """
        if self.render_mode != "rgb_array":
            return None
        n = _IMAGE_SIZE
        centres = (np.arange(n) + 0.5) / n * (2 * BOUND) - BOUND
        x = centres[None, :]
        y = centres[::-1, None]  # row 0 is the top of the arena
        image = np.full((n, n, 3), 255, dtype=np.uint8)
        image[np.broadcast_to(np.abs(x) < BOUND / n, (n, n))] = (220, 220, 220)
        image[np.broadcast_to(np.abs(y) < BOUND / n, (n, n))] = (220, 220, 220)
        for gx, gy in self.goals:
            disc = (x - gx) ** 2 + (y - gy) ** 2 < self.goal_threshold**2
            image[disc] = (120, 200, 120)
        for px, py in self._path[:-1]:
            dot = (x - px) ** 2 + (y - py) ** 2 < (0.4 * _AGENT_RADIUS) ** 2
            image[dot] = (90, 120, 220)
        px, py = self._pos
        image[(x - px) ** 2 + (y - py) ** 2 < _AGENT_RADIUS**2] = (210, 40, 40)
        return image
