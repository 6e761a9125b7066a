"""Rollout storage for the on-policy learners: SB3's RolloutBuffer plus named fields.

A flow learner stores, beside SB3's observations, actions, rewards, values and log-probs,
whatever its ratio needs: ReinFlow the denoising chain (T, E, K+1, Da), PolicyFlow the
latent, the ODE endpoint, the ratio's times and the old velocities there. One buffer class
takes the fields as a mapping ``name -> per-step shape``; each field is a float32 array
``(T, E, *shape)`` reachable as an attribute (``buffer.chains``) and in every minibatch's
``fields``. Returns and GAE advantages come from SB3's own ``compute_returns_and_advantage``:
flowrl has exactly one GAE.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

__all__ = ["ChainRolloutBuffer", "FieldRolloutBuffer", "FieldRolloutSamples"]

_SB3_FIELDS = ("observations", "actions", "values", "log_probs", "advantages", "returns")


@dataclass(frozen=True)
class FieldRolloutSamples:
    """A minibatch (M rows) of rollout steps.

    Attributes:
        observations: (M, Do) observations.
        actions: (M, Da) actions as the policy produced them (normalized, unclipped).
        old_values: (M,) values at rollout time.
        old_log_prob: (M,) log-probabilities of the rollout policy (float64).
        advantages: (M,) GAE advantages.
        returns: (M,) λ-returns (value targets).
        fields: The learner's fields, each (M, *shape).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    fields: dict[str, torch.Tensor]


class FieldRolloutBuffer(RolloutBuffer):
    """SB3 rollout buffer with extra per-step fields.

    Args:
        buffer_size: T, steps per env per rollout.
        observation_space: The env's observation space.
        action_space: The env's action space (Da).
        fields: Per-step shape of every extra field, e.g. ``{"chains": (K + 1, Da)}``.
        device: Torch device of sampled minibatches.
        gae_lambda: GAE λ.
        gamma: Discount.
        n_envs: E, parallel envs.
        float64_fields: Fields stored in float64 instead of float32 (log-probabilities that a
            ratio is taken of, like ``log_probs``: float32 storage would put the ratio's
            resolution above the first-minibatch check's 1e-6).
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        fields: Mapping[str, tuple[int, ...]],
        device: torch.device | str = "auto",
        gae_lambda: float = 1.0,
        gamma: float = 0.99,
        n_envs: int = 1,
        float64_fields: tuple[str, ...] = (),
    ):
        clash = set(fields) & {*_SB3_FIELDS, "rewards", "episode_starts"}
        if clash:
            raise ValueError(f"field names {sorted(clash)} are SB3's own buffer fields")
        unknown = set(float64_fields) - set(fields)
        if unknown:
            raise ValueError(f"float64_fields {sorted(unknown)} are not fields of this buffer")
        self.field_shapes = {name: tuple(int(n) for n in shape) for name, shape in fields.items()}
        self.float64_fields = tuple(float64_fields)
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )

    def reset(self) -> None:
        """Empty the buffer (also allocates the fields)."""
        for name, shape in self.field_shapes.items():
            dtype = np.float64 if name in self.float64_fields else np.float32
            self.__dict__[name] = np.zeros((self.buffer_size, self.n_envs, *shape), dtype)
        super().reset()
        # Chain log-likelihoods are sums of magnitude ~10: float32 storage alone would put
        # the PPO ratio's resolution above the 1e-6 that the first-minibatch check demands.
        self.log_probs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float64)
        # What the policy computes (actions, values, log-probs, fields) is written per step
        # into torch tensors on the policy's device: on CPU views of the numpy arrays above
        # (no copy at all), on a GPU device tensors copied to the host once per rollout
        # (:meth:`_to_host`), not once per step.
        self._host_synced = self.device.type == "cpu"
        self._staged = {
            name: self._stage(self.__dict__[name])
            for name in ("actions", "values", "log_probs", *self.field_shapes)
        }

    def _stage(self, array: np.ndarray) -> torch.Tensor:
        if self.device.type == "cpu":
            return torch.from_numpy(array)
        return torch.zeros(array.shape, dtype=torch.from_numpy(array[:0]).dtype, device=self.device)

    def _to_host(self) -> None:
        """Copy the device-staged arrays into the numpy arrays (once per rollout; CPU: no-op)."""
        if not self._host_synced:
            for name, tensor in self._staged.items():
                self.__dict__[name][...] = tensor.cpu().numpy()
            self._host_synced = True

    def add_step(
        self,
        obs: np.ndarray,
        action: torch.Tensor,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: torch.Tensor,
        log_prob: torch.Tensor,
        fields: Mapping[str, torch.Tensor],
    ) -> None:
        """Store one step of E envs.

        Args:
            obs: (E, Do) observations.
            action: (E, Da) actions as the policy produced them.
            reward: (E,) rewards (truncation bootstrap already added).
            episode_start: (E,) whether ``obs`` starts an episode.
            value: (E,) values.
            log_prob: (E,) log-probabilities.
            fields: Some or all of the fields, each (E, *shape); the rest stay zero until
                the update fills them (e.g. quantities scored in the update's layout).
        """
        unknown = set(fields) - set(self.field_shapes)
        if unknown:
            raise KeyError(f"unknown fields {sorted(unknown)}; this buffer has {self.field_shapes}")
        if self.full:
            raise RuntimeError(f"the rollout buffer is full ({self.buffer_size} steps); reset() it")
        pos, staged = self.pos, self._staged
        for name, data in fields.items():
            staged[name][pos].copy_(data.detach())
        staged["actions"][pos].copy_(action.detach().reshape(self.n_envs, self.action_dim))
        staged["values"][pos].copy_(value.detach().flatten())
        staged["log_probs"][pos].copy_(log_prob.detach().flatten())
        self.observations[pos] = np.asarray(obs).reshape(self.n_envs, *self.obs_shape)
        self.rewards[pos] = np.asarray(reward)
        self.episode_starts[pos] = np.asarray(episode_start)
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        """SB3's GAE (the one GAE of flowrl), on the host copy of the rollout."""
        self._to_host()
        super().compute_returns_and_advantage(last_values, dones)

    def flatten(self) -> None:
        """Swap (T, E) into one axis of T·E rows (once per rollout), as SB3's ``get`` does."""
        assert self.full, "the rollout buffer must be full before sampling"
        self._to_host()
        if not self.generator_ready:
            for name in (*_SB3_FIELDS, *self.field_shapes):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True

    def write_rows(self, rows: np.ndarray, values: Mapping[str, torch.Tensor]) -> None:
        """Overwrite flattened rows of ``log_probs`` and/or fields (after :meth:`flatten`)."""
        assert self.generator_ready, "flatten() the buffer before writing rows"
        for name, data in values.items():
            array = data.detach().cpu().numpy()
            if name == "log_probs":
                self.log_probs[rows] = array.reshape(-1, 1)  # (rows, 1)
            else:
                self.__dict__[name][rows] = array

    def get(  # type: ignore[override]
        self, batch_size: int | None = None, indices: np.ndarray | None = None
    ) -> Generator[FieldRolloutSamples, None, None]:
        """Yield minibatches of ``batch_size`` rows (all rows if None).

        Args:
            batch_size: Rows per minibatch.
            indices: Row order (a permutation of T·E rows); a fresh random one if None.
        """
        self.flatten()
        total = self.buffer_size * self.n_envs
        batch_size = batch_size or total
        indices = np.random.permutation(total) if indices is None else indices
        for start in range(0, total, batch_size):
            yield self._get_samples(indices[start : start + batch_size])

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> FieldRolloutSamples:  # type: ignore[override]
        data = (
            self.observations[batch_inds],
            self.actions[batch_inds],
            self.values[batch_inds].flatten(),
            self.log_probs[batch_inds].flatten(),
            self.advantages[batch_inds].flatten(),
            self.returns[batch_inds].flatten(),
        )
        fields = {n: self.to_torch(self.__dict__[n][batch_inds]) for n in self.field_shapes}
        return FieldRolloutSamples(*(self.to_torch(d) for d in data), fields=fields)


class ChainRolloutBuffer(FieldRolloutBuffer):
    """The buffer of chain learners (ReinFlow): one field, ``chains`` (K+1, Da).

    Args:
        buffer_size: T, steps per env per rollout.
        observation_space: The env's observation space.
        action_space: The env's action space (Da).
        num_steps: K, denoising steps per action.
        device: Torch device of sampled minibatches.
        gae_lambda: GAE λ.
        gamma: Discount.
        n_envs: E, parallel envs.
    """

    chains: np.ndarray

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        num_steps: int,
        device: torch.device | str = "auto",
        gae_lambda: float = 1.0,
        gamma: float = 0.99,
        n_envs: int = 1,
    ):
        self.num_steps = num_steps
        action_dim = int(np.prod(action_space.shape))
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            {"chains": (num_steps + 1, action_dim)},
            device,
            gae_lambda,
            gamma,
            n_envs,
        )
