"""The bridge from a batch of MJX environments to PyTorch learners.

:class:`MJXVecEnv` holds the states of E environments and advances all of them in one jitted
call: ``vmap(task.step)``, the time limit, auto-reset of finished episodes and episode
statistics happen inside JAX; the learner sees either

- the SB3 ``VecEnv`` interface (numpy arrays, ``infos`` with ``terminal_observation``,
  ``TimeLimit.truncated`` and ``episode``), so every SB3 algorithm and wrapper works, or
- :class:`TorchMJXEnv` (``env.torch``): ``reset() -> Tensor[E, Do]`` and
  ``step(Tensor[E, Da]) -> (obs, reward, terminated, truncated, info)``, all tensors, passed
  between JAX and torch by DLPack (no copy where the device allows).

Auto-reset keeps what GAE needs: the observation the finished episode ended in
(``terminal_observation`` / ``info["final_observation"]``) and the distinction between a
terminal state (``terminated``) and a time limit (``truncated``; bootstrap from V(s_T)).
Unlike Brax's training wrapper, finished envs restart from a fresh random reset, not a cached
first state.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from .core import MJXState, MJXTask

__all__ = ["MJXVecEnv", "TorchMJXEnv", "enable_compile_cache", "jax_to_torch", "torch_to_jax"]

Transfer = Literal["dlpack", "numpy"]


def enable_compile_cache(path: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache.

    MJX compiles for tens of seconds per task on CPU; with the cache a second process, or a
    second env of the same shape, loads the compiled code instead.

    Args:
        path: Cache folder; default ``$FLOWRL_JAX_CACHE`` or ``~/.cache/flowrl/jax``.

    Returns:
        The folder used.
    """
    path = os.fspath(
        path or os.environ.get("FLOWRL_JAX_CACHE") or os.path.expanduser("~/.cache/flowrl/jax")
    )
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def jax_to_torch(x: jax.Array, transfer: Transfer = "dlpack") -> torch.Tensor:
    """A JAX array as a torch tensor.

    ``"dlpack"`` aliases JAX's buffer (no copy): never write to the result in place (JAX
    assumes its arrays immutable). ``"numpy"`` copies through host memory.
    """
    if transfer == "dlpack":
        return torch.from_dlpack(x)
    return torch.from_numpy(np.array(x))


def torch_to_jax(t: torch.Tensor, transfer: Transfer = "dlpack") -> jax.Array:
    """A torch tensor as a JAX array (``"dlpack"``: shares memory where JAX allows it)."""
    if transfer == "dlpack":
        return jax.dlpack.from_dlpack(t.detach().contiguous())
    return jnp.asarray(t.detach().cpu().numpy())


@dataclasses.dataclass(frozen=True)
class _Batch:
    """States of E envs plus the bridge's own bookkeeping (all leaves lead with E)."""

    env: MJXState
    steps: jax.Array  # (E,) int32, steps taken in the current episode
    ep_return: jax.Array  # (E,) float32, undiscounted return so far
    key: jax.Array  # PRNG key for the resets


@dataclasses.dataclass(frozen=True)
class _StepOut:
    """What one batched step returns to the host."""

    obs: jax.Array  # (E, Do) next observation (a fresh reset's where done)
    final_obs: jax.Array  # (E, Do) the observation the step reached (before any reset)
    reward: jax.Array  # (E,)
    terminated: jax.Array  # (E,) bool
    truncated: jax.Array  # (E,) bool, time limit reached and not terminated
    done: jax.Array  # (E,) bool, terminated | truncated
    ep_return: jax.Array  # (E,) return of the episode that just ended (valid where done)
    ep_length: jax.Array  # (E,) its length (valid where done)
    metrics: dict[str, jax.Array]  # (E,) each, the task's per-term rewards of this step


for _cls in (_Batch, _StepOut):
    jax.tree_util.register_dataclass(
        _cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[]
    )


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Leafwise ``where(mask, new, old)`` with mask (E,) broadcast over trailing dims."""

    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(pick, new, old)


def make_batch_functions(task: MJXTask, num_envs: int):
    """The two jitted functions of a bridge.

    ``reset(key) -> _Batch`` and
    ``step(batch, actions (E, Da), max_episode_steps ()) -> (_Batch, _StepOut)``; the time
    limit is an argument, not a constant, so bridges that differ only in it share the code.
    """

    def reset(key: jax.Array) -> _Batch:
        key, sub = jax.random.split(key)
        env = jax.vmap(task.reset)(jax.random.split(sub, num_envs))
        zeros = jnp.zeros(num_envs, jnp.int32)
        return _Batch(env=env, steps=zeros, ep_return=jnp.zeros(num_envs, jnp.float32), key=key)

    def step(
        batch: _Batch, actions: jax.Array, max_episode_steps: jax.Array
    ) -> tuple[_Batch, _StepOut]:
        stepped = jax.vmap(task.step)(batch.env, actions)
        steps = batch.steps + 1
        ep_return = batch.ep_return + stepped.reward
        terminated = stepped.terminated
        time_up = steps >= max_episode_steps
        done = terminated | time_up
        key, sub = jax.random.split(batch.key)

        def reset_finished(_):
            fresh = jax.vmap(task.reset)(jax.random.split(sub, num_envs))
            return _select(done, fresh, stepped)

        # Resetting costs a forward pass per env; skip it on steps where nothing finished.
        env = jax.lax.cond(jnp.any(done), reset_finished, lambda _: stepped, None)
        new_batch = _Batch(
            env=env,
            steps=jnp.where(done, 0, steps),
            ep_return=jnp.where(done, 0.0, ep_return),
            key=key,
        )
        out = _StepOut(
            obs=env.obs,
            final_obs=stepped.obs,
            reward=stepped.reward,
            terminated=terminated,
            truncated=time_up & ~terminated,
            done=done,
            ep_return=ep_return,
            ep_length=steps,
            metrics=stepped.metrics,
        )
        return new_batch, out

    return jax.jit(reset), jax.jit(step)


def rank_device() -> Any:
    """The local JAX device of this process: number ``LOCAL_RANK`` (set by torchrun), else 0.

    With fewer devices than ranks on a machine (CPU: one), ranks share them round-robin.
    """
    devices = jax.local_devices()
    return devices[int(os.environ.get("LOCAL_RANK", "0")) % len(devices)]


class MJXVecEnv(VecEnv):
    """E MJX environments as one SB3 ``VecEnv`` (and, through :attr:`torch`, a torch env).

    Args:
        task: An :class:`~flowrl.envs.mjx.core.MJXTask` or a name for
            :func:`flowrl.envs.mjx.make_task` (``"Hopper"``, ``"playground/CheetahRun"``).
        num_envs: E, the batch size.
        seed: Seed of the reset noise; the same seed gives the same episodes.
        max_episode_steps: Time limit (truncation); default the task's (1000 for the ports,
            as gymnasium registers them).
        transfer: How the torch face crosses between JAX and torch: ``"dlpack"`` (default,
            shares buffers) or ``"numpy"`` (copies through host memory).
        task_kwargs: Passed to :func:`~flowrl.envs.mjx.make_task` when ``task`` is a name.
        device: The JAX device the batch lives on; None: this process's local device
            ``LOCAL_RANK`` (torchrun's rank on its machine, 0 in a plain run), so each rank
            of a data-parallel job simulates on its own GPU.

    Observations are float32 (MJX simulates in float32); actions are float32 within the
    actuators' ctrlrange (as gymnasium's action space).
    """

    def __init__(
        self,
        task: MJXTask | str,
        num_envs: int,
        *,
        seed: int = 0,
        max_episode_steps: int | None = None,
        transfer: Transfer = "dlpack",
        task_kwargs: dict[str, Any] | None = None,
        device: Any = None,
    ):
        if isinstance(task, str):
            from . import make_task

            task = make_task(task, **(task_kwargs or {}))
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if transfer not in ("dlpack", "numpy"):
            raise ValueError(f"transfer must be 'dlpack' or 'numpy', got {transfer!r}")
        self.task = task
        self.max_episode_steps = int(max_episode_steps or task.max_episode_steps)
        self.transfer: Transfer = transfer
        observation_space = gym.spaces.Box(
            -np.inf, np.inf, (task.observation_size,), dtype=np.float32
        )
        action_space = gym.spaces.Box(task.action_low, task.action_high, dtype=np.float32)
        super().__init__(num_envs, observation_space, action_space)
        self._reset_fn, self._step_fn = make_batch_functions(task, num_envs)
        self._time_limit = jnp.asarray(self.max_episode_steps, jnp.int32)
        self.device = rank_device() if device is None else device
        self._key = jax.random.PRNGKey(seed)
        self._batch: _Batch | None = None
        self._actions: np.ndarray | None = None
        self._t_start = time.time()
        self.torch = TorchMJXEnv(self)

    # ---------------------------------------------------------------- shared core

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Reseed the resets (takes effect at the next :meth:`reset`)."""
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        return [seed] * self.num_envs

    def _reset_batch(self) -> jax.Array:
        self._key, sub = jax.random.split(self._key)
        # A committed key gives committed outputs, like the step's: otherwise the first step
        # after a reset and the later ones would be two jit cache entries (two compiles).
        self._batch = self._reset_fn(jax.device_put(sub, self.device))
        self._t_start = time.time()
        return self._batch.env.obs

    def _step_batch(self, actions: jax.Array) -> _StepOut:
        if self._batch is None:
            raise RuntimeError("call reset() before step()")
        if actions.shape != (self.num_envs, self.task.action_size):
            raise ValueError(
                f"actions must have shape {(self.num_envs, self.task.action_size)}, "
                f"got {tuple(actions.shape)}"
            )
        # Commit the actions to the env's device whichever face they came from: jit caches
        # committed and uncommitted arguments apart, and a second MJX compile costs a minute.
        actions = jax.device_put(actions, self.device)
        if not bool(jnp.isfinite(actions).all()):
            # MJX would carry the NaN into every later state of that env, silently.
            raise ValueError("actions contain NaN or inf; refusing to step the MJX envs")
        self._batch, out = self._step_fn(self._batch, actions, self._time_limit)
        return out

    def episode_infos(
        self, done: Any, final_obs: Any, truncated: Any, ep_return: Any, ep_length: Any
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(done (E,), SB3-style info dicts) of a step: episode stats, terminal obs, time limit.

        The arguments are (E, ...) arrays of one step (JAX arrays or CPU tensors); only the
        finished envs' entries are read.
        """
        done = np.asarray(done)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        finished = np.flatnonzero(done)
        if finished.size:
            final_obs, truncated = np.asarray(final_obs), np.asarray(truncated)
            ep_return, ep_length = np.asarray(ep_return), np.asarray(ep_length)
            elapsed = round(time.time() - self._t_start, 6)
            for i in finished:
                infos[i] = {
                    "terminal_observation": final_obs[i].copy(),
                    "TimeLimit.truncated": bool(truncated[i]),
                    "episode": {"r": float(ep_return[i]), "l": int(ep_length[i]), "t": elapsed},
                }
        return done, infos

    # ---------------------------------------------------------------- SB3 VecEnv face

    def reset(self) -> np.ndarray:
        """Reset every env (SB3 face); returns obs (E, Do) as numpy."""
        return np.array(self._reset_batch())

    def step_async(self, actions: np.ndarray) -> None:
        """Store the actions (E, Da) for :meth:`step_wait`."""
        self._actions = actions

    def step_wait(self):
        """Step every env; returns SB3's (obs, rewards, dones, infos)."""
        out = self._step_batch(jnp.asarray(self._actions, dtype=jnp.float32))
        done, infos = self.episode_infos(
            out.done, out.final_obs, out.truncated, out.ep_return, out.ep_length
        )
        return np.array(out.obs), np.array(out.reward), done, infos

    def close(self) -> None:
        """Drop the env states."""
        self._batch = None

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The task's attribute, once per index."""
        # One task serves every env: each index sees the task's attribute.
        return [getattr(self.task, attr_name)] * len(self._get_indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refused: the compiled functions close over the task."""
        raise AttributeError(
            "MJXVecEnv shares one task between all envs and is compiled for it; "
            "build a new MJXVecEnv to change the task"
        )

    def env_method(self, method_name: str, *args, indices: VecEnvIndices = None, **kwargs):
        """Call a method of the task, once per index."""
        method = getattr(self.task, method_name)
        return [method(*args, **kwargs) for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None):
        """No gymnasium wrappers here: always False."""
        return [False] * len(self._get_indices(indices))

    def get_images(self) -> Sequence[np.ndarray | None]:
        """MJX tasks do not render."""
        return [None] * self.num_envs

    def __repr__(self) -> str:
        return f"MJXVecEnv({self.task!r}, num_envs={self.num_envs})"


class TorchMJXEnv:
    """The torch-native face of an :class:`MJXVecEnv` (same envs, same state).

    Tensors returned here may alias JAX buffers (``transfer="dlpack"``): read them, copy
    them, never modify them in place.
    """

    def __init__(self, env: MJXVecEnv):
        self.env = env
        self.num_envs = env.num_envs
        self.observation_space = env.observation_space
        self.action_space = env.action_space

    def reset(self) -> torch.Tensor:
        """Reset every env; returns obs (E, Do)."""
        return jax_to_torch(self.env._reset_batch(), self.env.transfer)

    def step(self, actions: torch.Tensor):
        """Advance every env by one step.

        Args:
            actions: (E, Da) float tensor.

        Returns:
            obs (E, Do) (a fresh reset's where an episode ended), reward (E,),
            terminated (E,) bool, truncated (E,) bool, and ``info`` with tensors
            ``final_observation`` (E, Do), ``done``, ``episode_return``, ``episode_length``
            (valid where done) and ``metrics`` (dict of (E,)).
        """
        transfer = self.env.transfer
        out = self.env._step_batch(torch_to_jax(actions.to(torch.float32), transfer))
        conv = lambda x: jax_to_torch(x, transfer)  # noqa: E731
        info = {
            "final_observation": conv(out.final_obs),
            "done": conv(out.done),
            "episode_return": conv(out.ep_return),
            "episode_length": conv(out.ep_length),
            "metrics": {k: conv(v) for k, v in out.metrics.items()},
        }
        return conv(out.obs), conv(out.reward), conv(out.terminated), conv(out.truncated), info

    def sb3_infos(
        self, truncated: torch.Tensor, info: dict[str, Any]
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(dones, SB3 info dicts) of a :meth:`step`'s results, for code written against SB3.

        The dicts hold episode statistics, ``terminal_observation`` and ``TimeLimit.truncated``
        for the envs whose episode ended, as :meth:`MJXVecEnv.step_wait` gives them.
        """
        cpu = lambda t: t.detach().cpu()  # noqa: E731
        return self.env.episode_infos(
            cpu(info["done"]),
            cpu(info["final_observation"]),
            cpu(truncated),
            cpu(info["episode_return"]),
            cpu(info["episode_length"]),
        )
