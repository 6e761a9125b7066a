"""Gymnasium wrappers for flow and diffusion policies.

:class:`ActionChunk` lets a policy act in chunks of ``Ta`` consecutive actions, the way
diffusion and flow policies for robot control usually do (DPPO and ReinFlow fine-tune Hopper
with chunks of 4): the policy emits one flat vector of ``Ta`` actions per decision and the
wrapper plays them one after another. One decision then spans ``Ta`` env steps, so a
discount ``gamma`` per decision is ``gamma ** (1 / Ta)`` per env step, and the credit for a
reward is assigned over ``Ta`` times fewer decisions.

The dataset side of the same idea is :func:`flowrl.data.chunk_actions`, which turns a
per-step offline dataset into one whose actions are the chunks the wrapper plays.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from flowrl.data.chunks import check_chunk

MEAN_INFO_KEYS: tuple[str, ...] = ("x_velocity",)
"""``info`` entries reported as their mean over a chunk's env steps (the others: last step's)."""


class ActionChunk(gymnasium.Wrapper):
    """Play a flat chunk of ``chunk`` actions per step of the wrapped env's ``Box`` actions.

    ``step(action)`` takes a vector of shape (chunk * Da,), reads it as ``chunk`` actions
    (chunk, Da) in time order, and steps the env with each until the chunk is played out or
    the episode ends (the rest of the chunk is then dropped). It returns the last
    observation, the **sum** of the rewards (undiscounted within the chunk, as DPPO does),
    the last termination/truncation flags, and the last step's ``info`` with

    * ``env_steps``: how many env steps the chunk took (``chunk``, fewer at an episode end),
      so callers count env steps, not decisions (see :class:`~flowrl.LearningCurveCallback`);
    * ``x_velocity`` (and the other :data:`MEAN_INFO_KEYS`): the mean over those steps.

    Args:
        env: An env with a 1-D ``Box`` action space of Da dimensions.
        chunk: Actions per decision, Ta >= 1 (1 plays one action per step, as unwrapped).

    Raises:
        ValueError: ``chunk`` < 1, or the action space is not a 1-D ``Box``.
    """

    def __init__(self, env: gymnasium.Env, chunk: int) -> None:
        super().__init__(env)
        self.chunk = check_chunk(chunk)
        space = env.action_space
        if not isinstance(space, gymnasium.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"ActionChunk needs a 1-D Box action space, got {space}")
        self.step_dim = int(space.shape[0])
        self.action_space = gymnasium.spaces.Box(
            low=np.tile(space.low, self.chunk),
            high=np.tile(space.high, self.chunk),
            dtype=space.dtype,  # type: ignore[arg-type]
        )

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Play the chunk (chunk * Da,); see the class docstring for what is returned."""
        flat = np.asarray(action)
        if flat.size != self.chunk * self.step_dim:
            raise ValueError(
                f"ActionChunk expects {self.chunk} actions of {self.step_dim} dims, a vector of "
                f"shape ({self.chunk * self.step_dim},); got shape {flat.shape}"
            )
        actions = flat.reshape(self.chunk, self.step_dim)
        total, played = 0.0, 0
        means: dict[str, list[float]] = {}
        for step_action in actions:
            played += 1
            obs, reward, terminated, truncated, info = self.env.step(step_action)
            total += float(reward)
            for key in MEAN_INFO_KEYS:
                if key in info:
                    means.setdefault(key, []).append(float(info[key]))
            if terminated or truncated:
                break
        info = dict(info)
        info["env_steps"] = played
        info.update({key: float(np.mean(values)) for key, values in means.items()})
        return obs, total, terminated, truncated, info
