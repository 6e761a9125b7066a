"""Reward-free exploration: intrinsic rewards, and an off-policy agent that maximizes them.

    agent = ExplorationSAC("MlpPolicy", "flowrl/PointMaze-UMaze-v0", intrinsic="rnd")
    agent.learn(50_000)              # the env's reward is never read

An intrinsic reward is a :class:`Novelty` module with three faces:

* :meth:`Novelty.observe`: sees every state the env visits (a count-based bonus counts here);
* :meth:`Novelty.update`: one training step of its model on a replay batch of states;
* :meth:`Novelty.novelty`: the raw bonus of a batch of states, shape (B,), no gradient.

:class:`IntrinsicRewardMixin` (placed before an SB3 off-policy algorithm in the bases, e.g.
``class ExplorationSAC(IntrinsicRewardMixin, SAC)``) relabels every replay batch the learner
draws: it first trains the novelty model on the batch's next states, then replaces the rewards
by the novelty of those next states divided by a running standard deviation of the raw
novelties (the normalization of the EDP/ExDM reference code: a scale, no mean shift), times
``intrinsic_scale``. The env is wrapped in :class:`RewardFree` (before SB3's ``Monitor``) so its
reward is dropped unread; a learner built this way cannot use a task reward even by mistake.

Three novelties:

* :class:`ScoreNovelty`, EDP's score intrinsic reward (arXiv 2502.07279): a flow-matching model
  of the visited states trained with :func:`~flowrl.flow.losses.flow_matching_loss`; the bonus
  is its flow-matching error at a state, averaged over ``num_draws`` (t, ε) draws, one time in
  each cell of THE time grid (:func:`~flowrl.flow.times.time_grid`) — rarely visited states are
  badly modelled, so their error is high;
* :class:`RNDNovelty`: random network distillation (Burda et al. 2018, arXiv 1810.12894): the
  error of a predictor trained to match a fixed random network;
* :class:`CountNovelty`: a count-based bonus 1/√N(cell) over a grid of the raw observation
  (Tang et al. 2017's counting on a discretization; ``bin_width`` in observation units), counted
  in a fixed-size hashed table so it travels in the checkpoint's state dict.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import Tensor, nn

from flowrl.algos.common import check_total_timesteps, refuse_distributed
from flowrl.flow.losses import flow_matching_loss
from flowrl.flow.times import time_grid
from flowrl.nets.mlp import MLP, VelocityMLP

__all__ = [
    "NOVELTIES",
    "CountNovelty",
    "ExplorationSAC",
    "IntrinsicRewardMixin",
    "Novelty",
    "RNDNovelty",
    "RewardFree",
    "RunningMoments",
    "ScoreNovelty",
    "VecRewardFree",
    "make_novelty",
]


# ---------------------------------------------------------------------- reward-free envs


class RewardFree(gym.Wrapper):
    """Drops the env's reward without reading it: every step returns reward 0.0."""

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """The wrapped env's step with reward 0.0 (the env's reward is never touched)."""
        obs, _reward, terminated, truncated, info = self.env.step(action)
        return obs, 0.0, terminated, truncated, info


class VecRewardFree(VecEnvWrapper):
    """:class:`RewardFree` for an env that is already vectorized: rewards become zeros.

    The vectorized env itself has copied the rewards into its buffer; the learner above it
    sees only zeros.
    """

    def reset(self) -> Any:
        """Reset the wrapped vectorized env."""
        return self.venv.reset()

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step the wrapped vectorized env; rewards are replaced by zeros."""
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, np.zeros_like(rewards, dtype=np.float32), dones, infos


def wrap_reward_free(env: Any) -> Any:
    """``env`` with its reward dropped (:class:`RewardFree` or :class:`VecRewardFree`)."""
    if isinstance(env, VecEnv):
        return env if _is_wrapped(env, VecRewardFree) else VecRewardFree(env)
    if isinstance(env, gym.Env):
        return env if _is_wrapped(env, RewardFree) else RewardFree(env)
    return env  # None (load without env): SB3 handles it


def _is_wrapped(env: Any, kind: type) -> bool:
    while env is not None:
        if isinstance(env, kind):
            return True
        env = getattr(env, "venv", None) if isinstance(env, VecEnv) else getattr(env, "env", None)
    return False


# ---------------------------------------------------------------------- running moments


class RunningMoments(nn.Module):
    """Running mean and variance of a feature vector (Chan et al.'s parallel update).

    Buffers, so the statistics travel in a state dict.

    Args:
        dim: Feature width (1 for a scalar stream).
    """

    count: Tensor
    mean: Tensor
    var: Tensor

    def __init__(self, dim: int = 1):
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge a batch (B, dim) or (B,) into the statistics."""
        x = x.detach().to(torch.float64).reshape(x.shape[0], -1)
        n = x.shape[0]
        if n == 0:
            return
        mean, var = x.mean(dim=0), x.var(dim=0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        m2 = self.var * self.count + var * n + delta.square() * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.fill_(total)

    def std(self, eps: float = 1e-8) -> Tensor:
        """Standard deviation (dim,), float64, at least ``eps``."""
        return self.var.sqrt().clamp_min(eps)

    def normalize(self, x: Tensor, clip: float | None = None) -> Tensor:
        """(x − mean)/std in x's dtype, optionally clipped to [−clip, clip]."""
        out = (x - self.mean.to(x.dtype)) / self.std().to(x.dtype)
        return out if clip is None else out.clamp(-clip, clip)


# ---------------------------------------------------------------------- novelties


class Novelty(nn.Module):
    """An intrinsic-reward model over observations (see the module docstring).

    Args:
        obs_dim: Observation width Do.
        learning_rate: Adam step size of the model (ignored by models that do not learn).
    """

    name: ClassVar[str] = "novelty"

    def __init__(self, obs_dim: int, learning_rate: float = 1e-4):
        super().__init__()
        if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 1:
            raise ValueError(f"obs_dim must be a positive integer, got {obs_dim!r}")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.obs_dim = obs_dim
        self.learning_rate = float(learning_rate)
        self.optimizer: torch.optim.Optimizer | None = None

    def _make_optimizer(self) -> None:
        params = [p for p in self.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.learning_rate) if params else None

    def _check(self, obs: Tensor) -> Tensor:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"{type(self).__name__} takes observations of shape (B, {self.obs_dim}), got "
                f"{tuple(obs.shape)}"
            )
        return obs.float()

    def observe(self, obs: np.ndarray) -> None:
        """See the states the env just visited, shape (n_envs, Do) (default: nothing)."""

    def loss(self, obs: Tensor) -> Tensor:
        """The model's training loss on a batch (scalar); models without one return None."""
        raise NotImplementedError

    def update(self, obs: Tensor) -> dict[str, float]:
        """One Adam step of the model on a batch of states (B, Do); its statistics."""
        loss = self.loss(self._check(obs))
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{type(self).__name__} loss is {float(loss)}; the update was not applied. "
                "Check the observations for NaN or extreme values."
            )
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"novelty_loss": float(loss.detach())}

    def novelty(self, obs: Tensor) -> Tensor:
        """The raw bonus of each state, shape (B,), float32, no gradient."""
        raise NotImplementedError


class ScoreNovelty(Novelty):
    """EDP's score intrinsic reward: the flow-matching error of a state model.

    A velocity network v_ψ(t, x) (:class:`~flowrl.nets.mlp.VelocityMLP`, unconditional) is
    trained by conditional flow matching on running-normalized states; the bonus of a state s
    is its error ``mean_j ‖v_ψ(t_j, x_j) − (s − ε_j)‖²/Do``, x_j = t_j s + (1 − t_j) ε_j,
    over ``num_draws`` draws with t_j uniform in the j-th cell of THE time grid of
    ``num_draws`` steps (stratified: one draw per cell). The flow-matching loss bounds the
    negative log-likelihood of the model up to terms that do not depend on s, so the bonus is
    high where the buffer has few states.

    Args:
        obs_dim: Observation width Do.
        num_draws: (t, ε) draws per state for the bonus (20 in the reference maze config).
        width: Hidden width of the velocity network.
        depth: Residual blocks of the velocity network.
        learning_rate: Adam step size (1e-4 in the reference code).
    """

    name = "score"

    def __init__(
        self,
        obs_dim: int,
        num_draws: int = 20,
        width: int = 256,
        depth: int = 2,
        learning_rate: float = 1e-4,
    ):
        super().__init__(obs_dim, learning_rate)
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
        self.num_draws = num_draws
        self.obs_moments = RunningMoments(obs_dim)
        self.velocity_net = VelocityMLP(obs_dim, 0, width=width, depth=depth)
        self._make_optimizer()

    def _normalized(self, obs: Tensor) -> Tensor:
        return self.obs_moments.normalize(obs, clip=10.0)

    def loss(self, obs: Tensor) -> Tensor:
        """Flow-matching loss of the state model on a batch (updates the running moments)."""
        self.obs_moments.update(obs)
        x = self._normalized(obs)
        t = torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
        return flow_matching_loss(self.velocity_net, x, t, torch.randn_like(x))

    @torch.no_grad()
    def novelty(self, obs: Tensor) -> Tensor:
        """Mean flow-matching error over ``num_draws`` stratified (t, ε) draws, shape (B,)."""
        x = self._normalized(self._check(obs))
        starts, widths = time_grid(self.num_draws, device=x.device, dtype=x.dtype)
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for start, width in zip(starts, widths, strict=True):
            t = start + width * torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
            noise = torch.randn_like(x)
            total += flow_matching_loss(self.velocity_net, x, t, noise, reduction="none")
        return total / self.num_draws


class RNDNovelty(Novelty):
    """Random network distillation: ‖f_pred(s) − f_rand(s)‖²/k with f_rand fixed at random.

    Observations are normalized by running moments and clipped to [−5, 5] (as in the RND
    paper) before both networks.

    Args:
        obs_dim: Observation width Do.
        embedding_dim: k, the output width of both networks.
        hidden: Hidden widths of both networks.
        learning_rate: Adam step size of the predictor.
    """

    name = "rnd"

    def __init__(
        self,
        obs_dim: int,
        embedding_dim: int = 64,
        hidden: Sequence[int] = (256, 256),
        learning_rate: float = 1e-4,
    ):
        super().__init__(obs_dim, learning_rate)
        self.obs_moments = RunningMoments(obs_dim)
        self.target = MLP(obs_dim, embedding_dim, tuple(hidden), act="relu").requires_grad_(False)
        self.predictor = MLP(obs_dim, embedding_dim, tuple(hidden), act="relu")
        self._make_optimizer()

    def _errors(self, obs: Tensor) -> Tensor:
        x = self.obs_moments.normalize(obs, clip=5.0)
        with torch.no_grad():
            target = self.target(x)
        return (self.predictor(x) - target).square().mean(dim=-1)

    def loss(self, obs: Tensor) -> Tensor:
        """Predictor error on a batch (updates the running moments)."""
        self.obs_moments.update(obs)
        return self._errors(obs).mean()

    @torch.no_grad()
    def novelty(self, obs: Tensor) -> Tensor:
        """Predictor error per state, shape (B,)."""
        return self._errors(self._check(obs))


class CountNovelty(Novelty):
    """Count-based bonus 1/√N over grid cells of the raw observation.

    Each visited state is put in the cell ``floor(s / bin_width)`` (per dimension), hashed into
    a table of ``table_size`` counters (collisions merge cells; with 2^20 counters they are
    rare for the few thousand cells an exploration run visits). Counts grow in
    :meth:`observe`, i.e. once per env step, not per replay draw.

    Args:
        obs_dim: Observation width Do.
        bin_width: Cell width in observation units (one number, or one per dimension).
        table_size: Number of hashed counters.
    """

    name = "count"

    counts: Tensor
    _multipliers: Tensor

    def __init__(
        self,
        obs_dim: int,
        bin_width: float | Sequence[float] = 0.5,
        table_size: int = 1 << 20,
        learning_rate: float = 1e-4,
    ):
        super().__init__(obs_dim, learning_rate)
        widths = np.broadcast_to(np.asarray(bin_width, dtype=np.float64), (obs_dim,)).copy()
        if not (np.isfinite(widths).all() and (widths > 0).all()):
            raise ValueError(f"bin_width must be > 0 (per dimension), got {bin_width!r}")
        if isinstance(table_size, bool) or not isinstance(table_size, int) or table_size < 1:
            raise ValueError(f"table_size must be a positive integer, got {table_size!r}")
        self.bin_width = tuple(float(w) for w in widths)
        self.table_size = table_size
        self.register_buffer("counts", torch.zeros(table_size, dtype=torch.float64))
        # Fixed odd multipliers of a multiplicative hash of the integer cell (seeded, so a
        # loaded model hashes as the saved one did).
        gen = np.random.default_rng(12345)
        mult = gen.integers(1, 2**31 - 1, size=obs_dim, dtype=np.int64) | 1
        self.register_buffer("_multipliers", torch.as_tensor(mult))
        self.optimizer = None

    def _slots(self, obs: Tensor) -> Tensor:
        widths = torch.tensor(self.bin_width, dtype=torch.float64, device=obs.device)
        cells = torch.floor(obs.to(torch.float64) / widths).clamp(-(2**30), 2**30).long()
        return (cells * self._multipliers).sum(dim=-1).remainder(self.table_size)

    @torch.no_grad()
    def observe(self, obs: np.ndarray) -> None:
        """Count every visited state once."""
        x = self._check(
            torch.as_tensor(np.asarray(obs, dtype=np.float64)).reshape(-1, self.obs_dim)
        )
        slots = self._slots(x)
        self.counts.index_add_(0, slots, torch.ones_like(slots, dtype=torch.float64))

    def update(self, obs: Tensor) -> dict[str, float]:
        """Nothing to train: counts grow in :meth:`observe`."""
        return {}

    @torch.no_grad()
    def novelty(self, obs: Tensor) -> Tensor:
        """1/√N of each state's cell, shape (B,)."""
        counts = self.counts[self._slots(self._check(obs))]
        return (1.0 / counts.clamp_min(1.0).sqrt()).float()


NOVELTIES: dict[str, type[Novelty]] = {
    cls.name: cls for cls in (ScoreNovelty, RNDNovelty, CountNovelty)
}


def make_novelty(kind: str, obs_dim: int, **kwargs: Any) -> Novelty:
    """A :class:`Novelty` from its name (``"score"``, ``"rnd"``, ``"count"``) and options.

    Raises:
        ValueError: For an unknown name.
        TypeError: For options the novelty does not take.
    """
    if kind not in NOVELTIES:
        raise ValueError(f"unknown intrinsic reward {kind!r}; choose one of {sorted(NOVELTIES)}")
    return NOVELTIES[kind](obs_dim, **kwargs)


# ---------------------------------------------------------------------- learners


def _check_box_obs(space: gym.Space, learner: str) -> int:
    """Do for a flat Box observation space; a clear error for anything else."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(
            f"{learner}'s intrinsic reward models flat vector observations (a Box of shape "
            f"(Do,)), got {space}. Flatten dict observations first (e.g. gymnasium's "
            "FlattenObservation, or flowrl's mazes, whose observation is [x, y, vx, vy])."
        )
    return int(space.shape[0])


class IntrinsicRewardMixin:
    """Trains on intrinsic rewards only (place it before an SB3 off-policy algorithm).

    The learner's ``train`` draws replay batches as usual; each batch is relabelled: the
    novelty model first takes one step on the batch's next states (``novelty_updates`` steps
    per batch in all), then the batch's rewards become
    ``intrinsic_scale · novelty(s') / std`` with ``std`` the running standard deviation of all
    raw novelties seen so far.

    These learners do not train data-parallel (their novelty model and running statistics are
    fitted per process): under ``torchrun`` they refuse to be built (ValueError).
    """

    novelty_model: Novelty
    replay_buffer: ReplayBuffer
    intrinsic_scale: float
    novelty_updates: int

    def __init__(
        self,
        policy: Any,
        env: Any,
        *,
        intrinsic: str = "rnd",
        intrinsic_kwargs: dict[str, Any] | None = None,
        intrinsic_scale: float = 1.0,
        novelty_updates: int = 1,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ):
        refuse_distributed(self)
        if not (isinstance(intrinsic_scale, (int, float)) and intrinsic_scale > 0):
            raise ValueError(f"intrinsic_scale must be > 0, got {intrinsic_scale!r}")
        if isinstance(novelty_updates, bool) or not (
            isinstance(novelty_updates, int) and novelty_updates >= 1
        ):
            raise ValueError(f"novelty_updates must be a positive integer, got {novelty_updates!r}")
        if not isinstance(intrinsic, str) or intrinsic not in NOVELTIES:
            raise ValueError(
                f"unknown intrinsic reward {intrinsic!r}; choose one of {sorted(NOVELTIES)}"
            )
        self.intrinsic = intrinsic
        self.intrinsic_kwargs = dict(intrinsic_kwargs or {})
        self.intrinsic_scale = float(intrinsic_scale)
        self.novelty_updates = novelty_updates
        super().__init__(policy, env, _init_setup_model=False, **kwargs)  # type: ignore[call-arg]
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()  # type: ignore[misc]
        self._setup_intrinsic()

    def _setup_intrinsic(self) -> None:
        obs_dim = _check_box_obs(self.observation_space, type(self).__name__)  # type: ignore[attr-defined]
        self.novelty_model = make_novelty(self.intrinsic, obs_dim, **self.intrinsic_kwargs).to(
            self.device  # type: ignore[attr-defined]
        )
        self.reward_moments = RunningMoments(1).to(self.device)  # type: ignore[attr-defined]
        self._intrinsic_stats: dict[str, list[float]] = {}

    @staticmethod
    def _wrap_env(env: Any, verbose: int = 0, monitor_wrapper: bool = True) -> Any:
        # The reward is dropped before SB3's Monitor and DummyVecEnv ever read it.
        return SAC._wrap_env(wrap_reward_free(env), verbose, monitor_wrapper)

    def _store_transition(
        self, replay_buffer: Any, buffer_action: Any, new_obs: Any, *args: Any
    ) -> None:
        self.novelty_model.observe(np.asarray(new_obs))
        super()._store_transition(replay_buffer, buffer_action, new_obs, *args)  # type: ignore[misc]

    def learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        """The base learner's ``learn`` (refuses a budget that is not a positive integer)."""
        check_total_timesteps(total_timesteps)
        return super().learn(total_timesteps, *args, **kwargs)  # type: ignore[misc]

    def intrinsic_reward(self, next_obs: Tensor, update_stats: bool = True) -> Tensor:
        """``intrinsic_scale · novelty / running std`` of a batch of states, shape (B,)."""
        raw = self.novelty_model.novelty(next_obs.float())
        if update_stats:
            self.reward_moments.update(raw)
        return self.intrinsic_scale * raw / self.reward_moments.std().to(raw.dtype)

    def _relabel(self, data: ReplayBufferSamples) -> ReplayBufferSamples:
        stats = self._intrinsic_stats
        for _ in range(self.novelty_updates):
            for key, value in self.novelty_model.update(data.next_observations).items():
                stats.setdefault(key, []).append(value)
        reward = self.intrinsic_reward(data.next_observations)
        stats.setdefault("reward", []).append(float(reward.mean()))
        return data._replace(rewards=reward.reshape(data.rewards.shape).to(data.rewards.dtype))

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """The base learner's ``train`` on relabelled batches (see the class docstring)."""
        buffer = self.replay_buffer
        sample = buffer.sample

        def relabelled(n: int, env: Any = None) -> ReplayBufferSamples:
            return self._relabel(sample(n, env=env))

        buffer.sample = relabelled  # type: ignore[method-assign]
        self._intrinsic_stats = {}
        try:
            super().train(gradient_steps, batch_size)  # type: ignore[misc]
        finally:
            del buffer.sample  # the class's method again
        for key, values in self._intrinsic_stats.items():
            self.logger.record(f"intrinsic/{key}", float(np.mean(values)))  # type: ignore[attr-defined]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, variables = super()._get_torch_save_params()  # type: ignore[misc]
        names = ["novelty_model", "reward_moments"]
        if self.novelty_model.optimizer is not None:
            names.append("novelty_model.optimizer")
        return [*state_dicts, *names], variables

    def _excluded_save_params(self) -> list[str]:
        excluded = super()._excluded_save_params()  # type: ignore[misc]
        return [*excluded, "novelty_model", "reward_moments", "_intrinsic_stats"]


class ExplorationSAC(IntrinsicRewardMixin, SAC):
    """SB3's SAC trained on an intrinsic reward only (reward-free exploration baseline).

    Args:
        policy: SB3 SAC policy (``"MlpPolicy"``).
        env: The env (its reward is dropped unread, see :class:`RewardFree`).
        intrinsic: ``"rnd"``, ``"count"`` or ``"score"`` (rebuilt by name on load).
        intrinsic_kwargs: Options of the novelty (e.g. ``bin_width`` of ``"count"``).
        intrinsic_scale: Multiplier of the normalized bonus.
        novelty_updates: Novelty-model steps per replay batch.
        **kwargs: SB3 SAC's arguments.

    Raises:
        ValueError: For an unknown intrinsic reward, bad scales, or observations that are not
            a flat Box.
    """


def intrinsic_options() -> dict[str, list[str]]:
    """The options each novelty takes (for error messages and config checks)."""
    import inspect

    return {
        name: [
            p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "obs_dim")
        ]
        for name, cls in NOVELTIES.items()
    }
