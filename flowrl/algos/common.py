"""What every flowrl SB3 learner shares, on-policy and off-policy alike.

:class:`FlowLearner` is a mixin placed before the SB3 base class
(``class OnPolicyCore(FlowLearner, OnPolicyAlgorithm)``, ``class FlowSAC(FlowLearner,
OffPolicyAlgorithm)``). It owns three things once: building the policy from an alias, a class
or a ready instance while refusing another algorithm's policy (so a checkpoint of another
learner is refused on load), the warning against normalizing observations twice, and
``load`` with errors that name the file.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import GymEnv

from flowrl.policies.base import FlowPolicyBase, check_spaces

__all__ = ["WARMUPS", "FlowLearner", "OffPolicyFlowLearner", "check_total_timesteps"]

#: Actions before ``learning_starts`` of the replay-buffer flow learners.
WARMUPS = ("auto", "policy", "uniform")

SelfLearner = TypeVar("SelfLearner", bound="FlowLearner")


def check_total_timesteps(total_timesteps: Any) -> None:
    """Raise unless ``total_timesteps`` (of ``learn``) is a positive integer."""
    if not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
        raise ValueError(
            f"total_timesteps must be a positive integer (env steps to train), got "
            f"{total_timesteps!r}"
        )


class FlowLearner:
    """Mixin of every flowrl learner (before its SB3 base class in the bases).

    Attributes:
        policy_base: The policy class the learner takes; a checkpoint or policy of another
            class is refused.
    """

    policy_base: ClassVar[type[FlowPolicyBase]]
    policy: FlowPolicyBase
    policy_class: Any
    policy_kwargs: dict[str, Any]

    def _fits(self, policy_class: Any) -> bool:
        """Whether the learner can drive this policy class.

        A subclass of ``policy_base`` whose critic is of the other kind is refused:
        :class:`~flowrl.policies.FlowSACPolicy` (Q-critics) is a
        :class:`~flowrl.policies.FlowPolicy` (the same chain), but ReinFlow needs a value net.
        """
        return (
            isinstance(policy_class, type)
            and issubclass(policy_class, self.policy_base)
            and policy_class.off_policy == self.policy_base.off_policy
        )

    #: SB3's default of ``learn``'s ``log_interval`` for the learner's kind (rollouts for
    #: on-policy learners, episodes for off-policy ones).
    default_log_interval: ClassVar[int] = 1

    def learn(
        self: SelfLearner,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int | None = None,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfLearner:
        """Train for ``total_timesteps`` env steps (SB3's ``learn``).

        The TensorBoard run is named after the learner (``"ReinFlow"``, ``"FlowSAC"``)
        unless ``tb_log_name`` says otherwise; ``log_interval`` defaults to SB3's for the
        learner's kind.

        Raises:
            ValueError: If ``total_timesteps`` is not a positive integer.
        """
        check_total_timesteps(total_timesteps)
        self._check_observation_normalization()
        return super().learn(  # type: ignore[misc]
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=self.default_log_interval if log_interval is None else log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _setup_policy(self) -> None:
        """Learning-rate schedule, seeds, the policy, and ``policy_kwargs`` to rebuild it.

        Save/load rebuilds the policy from its constructor arguments and then loads its
        weights (the pretrained and reference flows included), so no checkpoint path is
        needed later.
        """
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        check_spaces(self.observation_space, self.action_space)
        self.policy = self._build_policy().to(self.device)
        params = self.policy._get_constructor_parameters()
        for key in ("observation_space", "action_space", "lr_schedule"):
            params.pop(key, None)
        self.policy_kwargs = params

    def _build_policy(self) -> FlowPolicyBase:
        """The policy from an instance, a class or an alias; another algorithm's is refused."""
        base = self.policy_base
        if isinstance(self.policy_class, base) and self._fits(type(self.policy_class)):
            if self.policy_kwargs:
                raise ValueError(f"pass policy_kwargs or a {base.__name__} instance, not both")
            policy = self.policy_class
            # Action bounds matter (the policy maps its [-1, 1] box onto them); observation
            # bounds may legitimately differ (wrappers), their shape may not.
            if policy.observation_space.shape != self.observation_space.shape or (
                policy.action_space != self.action_space
            ):
                raise ValueError(
                    f"the policy was built for observations {policy.observation_space.shape} and "
                    f"actions {policy.action_space}, but the env has "
                    f"{self.observation_space.shape} and {self.action_space}"
                )
            self.policy_class = type(policy)
            return policy
        if self._fits(self.policy_class):
            return self.policy_class(
                self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
            )
        name = getattr(self.policy_class, "__name__", type(self.policy_class).__name__)
        if isinstance(self.policy_class, base):
            name = type(self.policy_class).__name__
        raise ValueError(
            f"{type(self).__name__} needs a {base.__name__}, got {name}: a checkpoint or policy "
            "of another algorithm (e.g. PPO's ActorCriticPolicy, or another flowrl learner's "
            "policy) must be loaded with that algorithm"
        )

    def _check_observation_normalization(self) -> None:
        """Warn when observations would be normalized twice (VecNormalize and the actor)."""
        norm = self.get_vec_normalize_env()
        obs_norm = self.policy.actor.obs_normalizer
        own = not (bool((obs_norm.shift == 0).all()) and bool((obs_norm.scale == 1).all()))
        if norm is not None and norm.norm_obs and own:
            warnings.warn(
                "observations are normalized twice: the env is VecNormalize(norm_obs=True) and "
                "the pretrained actor normalizes observations itself (its normalizer was fitted "
                "on raw observations), so it sees normalized-twice inputs. Use "
                "VecNormalize(env, norm_obs=False, norm_reward=True) with a pretrained actor.",
                stacklevel=3,
            )

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfLearner],
        path: str | os.PathLike | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfLearner:
        """SB3's ``load``, with errors that name the file and say what is wrong.

        An SB3 ``.zip`` stores some objects pickled (SB3's format): load only files you
        trust. (flowrl's own resumable checkpoints and BC actors never unpickle.)

        Raises:
            FileNotFoundError: If neither ``path`` nor ``path + ".zip"`` exists.
            ValueError: If the file is damaged or truncated, or is not an SB3 checkpoint.
        """
        if isinstance(path, (str, os.PathLike)):
            name = os.fspath(path)
            if not os.path.isfile(name) and not os.path.isfile(name + ".zip"):
                raise FileNotFoundError(
                    f"no {cls.__name__} checkpoint at {name!r} (nor {name}.zip)"
                )
        else:
            name = repr(path)
        try:
            return super().load(
                path,
                env=env,
                device=device,
                custom_objects=custom_objects,
                print_system_info=print_system_info,
                force_reset=force_reset,
                **kwargs,
            )
        except (zipfile.BadZipFile, EOFError, AssertionError) as err:
            raise ValueError(
                f"{name} is not a readable {cls.__name__} checkpoint: the file is damaged or "
                f"truncated, or is not an SB3 .zip ({type(err).__name__}: {err})"
            ) from None


class OffPolicyFlowLearner(FlowLearner):
    """The replay-buffer flow learners' shared pieces: replay buffer and warm-up actions.

    Placed before ``OffPolicyAlgorithm`` in the bases (FlowSAC, EDP). ``warmup``
    (``"policy"`` or ``"uniform"``, resolved from ``"auto"`` by the learner) says what acts
    before ``learning_starts``.
    """

    warmup: str
    replay_buffer: ReplayBuffer | None

    @staticmethod
    def resolve_warmup(warmup: str, pretrained: bool) -> str:
        """``"auto"`` → ``"policy"`` for a pretrained flow, ``"uniform"`` for a fresh one.

        Raises:
            ValueError: For a value not in :data:`WARMUPS`.
        """
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
        if warmup == "auto":
            return "policy" if pretrained else "uniform"
        return warmup

    def _make_replay_buffer(self) -> None:
        """SB3's replay buffer of the env's transitions (y ∈ [−1, 1]^Da as actions)."""
        if self.replay_buffer_class is None:  # type: ignore[has-type]
            self.replay_buffer_class = ReplayBuffer
        if self.replay_buffer is None:
            self.replay_buffer = self.replay_buffer_class(
                self.buffer_size,  # type: ignore[attr-defined]
                self.observation_space,  # type: ignore[attr-defined]
                self.action_space,  # type: ignore[attr-defined]
                device=self.device,  # type: ignore[attr-defined]
                n_envs=self.n_envs,  # type: ignore[attr-defined]
                optimize_memory_usage=self.optimize_memory_usage,  # type: ignore[attr-defined]
                **(self.replay_buffer_kwargs or {}),  # type: ignore[attr-defined]
            )

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Env actions and the buffer's actions (y ∈ [−1, 1]^Da) for one step of every env.

        Before ``learning_starts``, ``warmup="uniform"`` samples the box; otherwise the
        flow's stochastic policy acts (SB3's rule, with the warm-up choice added).
        """
        if self.num_timesteps < learning_starts and self.warmup == "uniform":  # type: ignore[attr-defined]
            env_actions = np.array([self.action_space.sample() for _ in range(n_envs)])  # type: ignore[attr-defined]
        else:
            assert self._last_obs is not None, "self._last_obs was not set"  # type: ignore[attr-defined]
            env_actions, _ = self.predict(self._last_obs, deterministic=False)  # type: ignore[attr-defined]
        buffer_actions = self.policy.scale_action(env_actions)
        if action_noise is not None:
            buffer_actions = np.clip(buffer_actions + action_noise(), -1, 1)
        return self.policy.unscale_action(buffer_actions), buffer_actions
