"""MuJoCo Playground tasks behind flowrl's MJX bridge (the ``playground`` extra).

``PlaygroundTask("CheetahRun")`` adapts a Playground environment to the task API of
:class:`flowrl.envs.mjx.core.MJXTask` (``reset(rng)``, ``step(state, action)``, sizes and
action bounds), so :class:`~flowrl.envs.mjx.bridge.MJXVecEnv` batches it like the ports.

- The JAX implementation is selected (Playground 0.2 defaults to Warp, which needs a GPU).
- The DM Control suite tasks (``CartpoleBalance``, ``CheetahRun``, ``HopperHop``,
  ``WalkerWalk``, ...) are self-contained; locomotion and manipulation tasks download robot
  assets at first load, which fails offline.
- Playground's ``done`` is a termination; the episode length of the task's config becomes the
  bridge's time limit (truncation), so the two stay apart.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flowrl.optional import require

from .core import MJXState

__all__ = ["PlaygroundTask"]


class PlaygroundTask:
    """One MuJoCo Playground environment as a flowrl MJX task.

    Args:
        name: Playground registry name, e.g. ``"CartpoleBalance"``.
        config_overrides: Entries of the environment's config to change (``impl`` defaults
            to ``"jax"``).
        obs_key: For environments whose observation is a dict, the entry to use.
    """

    render_mode = None

    def __init__(
        self, name: str, *, config_overrides: dict[str, Any] | None = None, obs_key: str = "state"
    ):
        registry = require("mujoco_playground", "MuJoCo Playground tasks").registry
        overrides = {"impl": "jax", **(config_overrides or {})}
        self.name = name
        self.gym_id = f"playground/{name}"
        self.config = registry.get_default_config(name)
        self.env = registry.load(name, config_overrides=overrides)
        self.obs_key = obs_key
        self.action_size = int(self.env.action_size)
        # Playground policies act in [-1, 1] (its tasks' actuators are normalized to it).
        self.action_low = -np.ones(self.action_size, np.float32)
        self.action_high = np.ones(self.action_size, np.float32)
        self.max_episode_steps = int(self.config.episode_length)
        probe = jax.eval_shape(self.env.reset, jax.random.PRNGKey(0))
        self.metric_names = tuple(sorted(probe.metrics))
        self.observation_size = int(np.prod(self._obs(probe.obs).shape))

    def _obs(self, obs: Any) -> jax.Array:
        if isinstance(obs, dict):
            if self.obs_key not in obs:
                raise KeyError(
                    f"{self.name} observations are a dict with keys {sorted(obs)}; "
                    f"pick one with obs_key="
                )
            obs = obs[self.obs_key]
        return obs

    def _wrap(self, state: Any) -> MJXState:
        return MJXState(
            data=state,
            obs=jnp.ravel(self._obs(state.obs)).astype(jnp.float32),
            reward=jnp.asarray(state.reward, jnp.float32),
            terminated=jnp.asarray(state.done, jnp.float32) > 0.5,
            metrics={k: jnp.asarray(state.metrics[k], jnp.float32) for k in self.metric_names},
        )

    def reset(self, rng: jax.Array) -> MJXState:
        """A fresh episode of the Playground environment."""
        return self._wrap(self.env.reset(rng))

    def step(self, state: MJXState, action: jax.Array) -> MJXState:
        """One Playground step (its ``action_repeat`` included)."""
        return self._wrap(self.env.step(state.data, jnp.asarray(action, jnp.float32)))

    def __repr__(self) -> str:
        return f"PlaygroundTask({self.name!r}, Do={self.observation_size}, Da={self.action_size})"
