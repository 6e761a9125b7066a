"""Rollout storage for chain policies: SB3's RolloutBuffer plus the denoising chain.

A flow policy's action is the end of a K-step chain, and its likelihood is that of the
whole chain, so the buffer keeps the chain (T, E, K+1, Da) next to SB3's usual fields.
Returns and GAE advantages come from SB3's own ``compute_returns_and_advantage``: flowrl
has exactly one GAE.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

__all__ = ["ChainRolloutBuffer", "ChainRolloutSamples"]


class ChainRolloutSamples(NamedTuple):
    """A minibatch (M rows) of chain rollouts.

    Attributes:
        observations: (M, Do) observations the chains were sampled for.
        chains: (M, K+1, Da) chains in the normalized action box.
        old_values: (M,) values at rollout time.
        old_log_prob: (M,) chain log-likelihoods at rollout time.
        advantages: (M,) GAE advantages.
        returns: (M,) λ-returns (value targets).
    """

    observations: torch.Tensor
    chains: torch.Tensor
    old_values: torch.Tensor
    old_log_prob: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class ChainRolloutBuffer(RolloutBuffer):
    """SB3 rollout buffer that also stores each step's chain.

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
        super().__init__(
            buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs
        )

    def reset(self) -> None:
        """Empty the buffer (also allocates the chain array)."""
        self.chains = np.zeros(
            (self.buffer_size, self.n_envs, self.num_steps + 1, self.action_dim), dtype=np.float32
        )
        super().reset()
        # Chain log-likelihoods are sums of magnitude ~10: float32 storage alone would put
        # the PPO ratio's resolution above the 1e-6 that the first-minibatch check demands.
        self.log_probs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float64)

    def add_chain(
        self,
        obs: np.ndarray,
        chain: torch.Tensor,
        reward: np.ndarray,
        episode_start: np.ndarray,
        value: torch.Tensor,
        log_prob: torch.Tensor,
    ) -> None:
        """Store one step of E envs.

        Args:
            obs: (E, Do) observations.
            chain: (E, K+1, Da) sampled chains.
            reward: (E,) rewards (truncation bootstrap already added).
            episode_start: (E,) whether ``obs`` starts an episode.
            value: (E,) values.
            log_prob: (E,) chain log-likelihoods.
        """
        self.chains[self.pos] = chain.detach().cpu().numpy()
        # SB3's ``actions`` field keeps the final (normalized, unclipped) state a^K.
        self.add(obs, chain[:, -1].detach().cpu().numpy(), reward, episode_start, value, log_prob)

    def flatten(self) -> None:
        """Swap (T, E) into one axis of T·E rows (once per rollout), as SB3's ``get`` does."""
        assert self.full, "the rollout buffer must be full before sampling"
        if not self.generator_ready:
            names = ("observations", "chains", "actions", "values", "log_probs", "advantages")
            for name in (*names, "returns"):
                self.__dict__[name] = self.swap_and_flatten(self.__dict__[name])
            self.generator_ready = True

    def get(  # type: ignore[override]
        self, batch_size: int | None = None, indices: np.ndarray | None = None
    ) -> Generator[ChainRolloutSamples, None, None]:
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

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> ChainRolloutSamples:  # type: ignore[override]
        data = (
            self.observations[batch_inds],
            self.chains[batch_inds],
            self.values[batch_inds].flatten(),
            self.log_probs[batch_inds].flatten(),
            self.advantages[batch_inds].flatten(),
            self.returns[batch_inds].flatten(),
        )
        return ChainRolloutSamples(*(self.to_torch(d) for d in data))
