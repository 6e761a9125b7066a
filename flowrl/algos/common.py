"""What every flowrl SB3 learner shares, on-policy and off-policy alike.

:class:`FlowLearner` is a mixin placed before the SB3 base class
(``class OnPolicyCore(FlowLearner, OnPolicyAlgorithm)``, ``class FlowSAC(FlowLearner,
OffPolicyAlgorithm)``). It owns three things once: building the policy from an alias, a class
or a ready instance while refusing another algorithm's policy (so a checkpoint of another
learner is refused on load), the warning against normalizing observations twice,
``load`` with errors that name the file, and the data-parallel rules every learner follows
under ``torchrun`` (:mod:`flowrl.distributed`): seeds offset by rank, every rank starting each
``learn`` from rank 0's weights and ``VecNormalize`` statistics, and rank 0 alone owning the
outside world (callbacks, which evaluate and checkpoint; TensorBoard and stdout; ``save``).

:class:`OffPolicyFlowLearner` adds what the replay-buffer learners (FlowSAC, EDP) share,
including their data-parallel loop: each rank steps its own envs into its own replay buffer,
``num_timesteps`` counts every rank's steps, and the ranks agree on when to stop.
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
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import (
    GymEnv,
    RolloutReturn,
    TrainFreq,
    TrainFrequencyUnit,
)
from stable_baselines3.common.utils import should_collect_more_steps
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from flowrl import distributed
from flowrl.policies.base import FlowPolicyBase, check_spaces

__all__ = [
    "WARMUPS",
    "FlowLearner",
    "OffPolicyFlowLearner",
    "check_total_timesteps",
    "refuse_distributed",
]

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


def refuse_distributed(learner: object) -> None:
    """Raise under ``torchrun`` for a learner that does not train data-parallel.

    For the learners built on SB3's own algorithms without :class:`FlowLearner` (DSRL, the
    reward-free explorers): every rank would train its own copy and write its own files.

    Raises:
        ValueError: In a process group of more than one rank (on every rank that builds one).
    """
    if distributed.is_distributed():
        name = type(learner).__name__
        raise ValueError(
            f"{name} does not train data-parallel; launch it without torchrun (this process "
            f"is rank {distributed.rank()} of {distributed.world_size()})"
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
    #: Whether the learner trains data-parallel under torchrun (:mod:`flowrl.distributed`).
    supports_data_parallel: ClassVar[bool] = True

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
        if not distributed.is_main():
            # Rank 0 owns the outside world: evaluation, checkpoints, progress bars.
            callback, progress_bar = None, False
        return super().learn(  # type: ignore[misc]
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=self.default_log_interval if log_interval is None else log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _distributed_settings(self) -> dict[str, Any]:
        """Settings that must match on every rank for their loops to meet (None: no check)."""
        return {"n_envs": self.n_envs}  # type: ignore[attr-defined]

    def _setup_learn(self, total_timesteps: int, callback: Any = None, *args: Any, **kwargs: Any):
        """SB3's set-up of ``learn``; under torchrun, the ranks agree before the first step.

        Every rank checks that the settings its loop depends on match, takes rank 0's
        weights and ``VecNormalize`` statistics, and ranks other than 0 log nothing.
        """
        if distributed.is_distributed():
            distributed.check_same(
                f"{type(self).__name__}'s rank-dependent settings", self._distributed_settings()
            )
            distributed.broadcast_module(self.policy, what="the policy's weights")  # type: ignore[arg-type]
            distributed.share_vec_normalize(self.get_vec_normalize_env())  # type: ignore[attr-defined]
            if not distributed.is_main():
                self.verbose = 0
                self._custom_logger = True
                self._logger = Logger(folder=None, output_formats=[])
        return super()._setup_learn(total_timesteps, callback, *args, **kwargs)  # type: ignore[misc]

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding of python, numpy, torch, the action space and the envs.

        Under torchrun rank r uses ``seed + r·n_envs``: its envs get the seeds that envs
        r·E … of a single process of all ranks' envs would, and its noise differs from the
        other ranks'.
        """
        stride = getattr(self, "n_envs", None) or 1
        super().set_random_seed(distributed.rank_seed(seed, stride))  # type: ignore[misc]

    def save(self, path: Any, *args: Any, **kwargs: Any) -> None:
        """SB3's ``save``; under torchrun only rank 0 writes (all ranks hold the same weights)."""
        if distributed.is_main():
            super().save(path, *args, **kwargs)  # type: ignore[misc]

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
    """The replay-buffer flow learners' shared pieces, their data-parallel loop included.

    Placed before ``OffPolicyAlgorithm`` in the bases (FlowSAC, EDP). ``warmup``
    (``"policy"`` or ``"uniform"``, resolved from ``"auto"`` by the learner) says what acts
    before ``learning_starts``.

    Under ``torchrun`` (:mod:`flowrl.distributed`) W ranks of E envs train what one process of
    W·E envs would:

    * each rank steps its own envs into its own replay buffer (nothing is shared); the
      global sizes are split: ``buffer_size`` (each rank keeps ``buffer_size // W``
      transitions) and ``batch_size`` (each rank samples ``batch_size // W`` rows; W must
      divide it);
    * ``num_timesteps`` counts every rank's env steps (W·E per vectorized step), so
      ``learning_starts``, ``total_timesteps``, schedules and ``gradient_steps=-1`` read
      global counts, and every rank calls ``train`` at the same steps with the same number of
      gradient steps (``train_freq`` must count steps: episodes end at different times on
      different ranks);
    * the learner's ``train`` averages every optimizer's gradients over the ranks before
      clipping and stepping, refuses a step on every rank when a loss is not finite on any
      (one all-reduce per gradient step, :meth:`_average_gradients`), and checks after each
      ``train`` call that the ranks' weights are still bit-identical
      (:meth:`_check_in_sync`);
    * after each ``collect_rollouts`` the ranks agree whether a callback (rank 0's) stopped
      training, and merge their ``VecNormalize`` statistics, with which the replay buffer
      normalizes the next minibatches.
    """

    warmup: str
    replay_buffer: ReplayBuffer | None
    batch_size: int
    buffer_size: int
    learning_starts: int
    train_freq: TrainFreq
    gradient_steps: int

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
        """SB3's replay buffer of the env's transitions (y ∈ [−1, 1]^Da as actions).

        Under torchrun each rank's holds ``buffer_size // world_size`` transitions.
        """
        if self.replay_buffer_class is None:  # type: ignore[has-type]
            self.replay_buffer_class = ReplayBuffer
        if self.replay_buffer is None:
            # Under torchrun buffer_size is the capacity of all ranks' buffers together.
            self.replay_buffer = self.replay_buffer_class(
                max(self.buffer_size // distributed.world_size(), 1),
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

    # ------------------------------------------------------------------ data-parallel

    def _check_world(self) -> None:
        """Refuse settings the ranks cannot split or keep in step (``train_freq`` converted).

        Raises:
            ValueError: On every rank (each checks the same numbers): a ``batch_size`` the
                world size does not divide, or a ``train_freq`` in episodes.
        """
        if distributed.world_size() == 1:
            return
        distributed.share(self.batch_size, "batch_size", "minibatch, from its own replay")
        if self.train_freq.unit != TrainFrequencyUnit.STEP:
            raise ValueError(
                f"train_freq=({self.train_freq.frequency}, 'episode') counts episodes, which "
                "end at different times on different ranks, so the ranks would train at "
                "different times: under torchrun give train_freq in env steps (an integer)"
            )

    def _distributed_settings(self) -> dict[str, Any]:
        return {
            "n_envs": self.n_envs,  # type: ignore[attr-defined]
            "batch_size": self.batch_size,
            "buffer_size": self.buffer_size,
            "learning_starts": self.learning_starts,
            "train_freq": (self.train_freq.frequency, self.train_freq.unit.value),
            "gradient_steps": self.gradient_steps,
            "gamma": self.gamma,  # type: ignore[attr-defined]
            "tau": self.tau,  # type: ignore[attr-defined]
        }

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        train_freq: TrainFreq,
        replay_buffer: ReplayBuffer,
        action_noise: ActionNoise | None = None,
        learning_starts: int = 0,
        log_interval: int | None = None,
    ) -> RolloutReturn:
        """SB3's ``collect_rollouts``, counting every rank's env steps under torchrun.

        The same steps as SB3's (act, step the envs, callback, store, log), except that each
        vectorized step adds W·E to ``num_timesteps`` (W ranks of E envs), so what reads it
        during the rollout (warm-up actions, the progress of schedules, callbacks) sees the
        global count. At the end the ranks agree whether a callback stopped training (it runs
        on rank 0 only; then every rank stops, ``num_timesteps`` counting the steps each rank
        took) and merge their ``VecNormalize`` statistics. The returned
        ``episode_timesteps`` (``gradient_steps=-1``'s number) is every rank's steps.
        """
        self.policy.set_training_mode(False)
        num_collected_steps, num_collected_episodes = 0, 0
        assert isinstance(env, VecEnv), "You must pass a VecEnv"
        assert train_freq.frequency > 0, "Should at least collect one step or episode."
        if env.num_envs > 1:
            assert train_freq.unit == TrainFrequencyUnit.STEP, (
                "You must use only one env when doing episodic training."
            )
        world = distributed.world_size()
        start = self.num_timesteps  # type: ignore[has-type]
        stopped = False
        callback.on_rollout_start()
        while should_collect_more_steps(train_freq, num_collected_steps, num_collected_episodes):
            actions, buffer_actions = self._sample_action(
                learning_starts, action_noise, env.num_envs
            )
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs * world
            num_collected_steps += 1
            callback.update_locals(locals())
            # Only stop training if the callback returns False, not None (SB3's rule).
            if not callback.on_step():
                stopped = True
                break
            self._update_info_buffer(infos, dones)  # type: ignore[attr-defined]
            # Normalized actions and unnormalized observations, as SB3 stores them.
            self._store_transition(replay_buffer, buffer_actions, new_obs, rewards, dones, infos)  # type: ignore[attr-defined]
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)  # type: ignore[attr-defined]
            self._on_step()  # type: ignore[attr-defined]
            for idx, done in enumerate(dones):
                if done:
                    num_collected_episodes += 1
                    self._episode_num += 1  # type: ignore[attr-defined]
                    if action_noise is not None:
                        kwargs = dict(indices=[idx]) if env.num_envs > 1 else {}
                        action_noise.reset(**kwargs)
                    if log_interval is not None and self._episode_num % log_interval == 0:  # type: ignore[attr-defined]
                        self.dump_logs()  # type: ignore[attr-defined]
        steps = num_collected_steps * env.num_envs
        if distributed.is_distributed():
            agreed = distributed.all_reduce(
                [float(stopped), float(steps)],
                "sum",
                "agreeing whether a callback stopped training",
            )
            stopped, steps = bool(agreed[0] > 0), int(agreed[1])
            if stopped:  # every rank stops, counting the steps every rank took
                self.num_timesteps = start + steps
            else:
                distributed.sync_vec_normalize(self.get_vec_normalize_env())  # type: ignore[attr-defined]
        if stopped:
            return RolloutReturn(steps, num_collected_episodes, continue_training=False)
        callback.on_rollout_end()
        return RolloutReturn(steps, num_collected_episodes, continue_training=True)

    def _average_gradients(
        self, sync: distributed.GradientSync, losses: dict[str, Tensor | None]
    ) -> None:
        """Average the gradients of a step over the ranks; refuse it if a loss is not finite.

        Call after every loss's ``backward`` and before clipping and stepping. One
        all-reduce carries the gradients and each loss's "not finite" flag, so a NaN on one
        rank stops every rank at the same step (a no-op in a single process, where the
        learner has already refused a non-finite loss before ``backward``).

        Args:
            sync: The gradient sync of every parameter the step's optimizers hold.
            losses: The step's losses by name (None: not computed in this step).

        Raises:
            FloatingPointError: On every rank, if a loss is not finite on some rank; no
                optimizer has stepped.
        """
        if not distributed.is_distributed():
            return
        flags = [
            float(loss is not None and not bool(torch.isfinite(loss))) for loss in losses.values()
        ]
        bad = sync(flags, what=f"averaging {type(self).__name__}'s gradients")
        if bool((bad > 0).any()):
            names = [name for name, count in zip(losses, bad.tolist(), strict=True) if count > 0]
            here = ", ".join(
                f"{name} {float(loss.detach()):.4g}"
                for name, loss in losses.items()
                if loss is not None
            )
            raise FloatingPointError(
                f"{type(self).__name__} loss is not finite on some rank ({', '.join(names)}; "
                f"here: {here}); the update was not applied. Check rewards/observations for NaN "
                "or extreme values, or lower the learning rate."
            )

    def _check_in_sync(self, *extra: Tensor | None) -> None:
        """Raise on every rank unless the policy and ``extra`` (e.g. log α) match bit for bit.

        A no-op in a single process.

        Raises:
            DistributedError: If the ranks' copies diverged.
        """
        if not distributed.is_distributed():
            return
        holder = torch.nn.Module()
        holder.policy = self.policy
        holder.extra = torch.nn.ParameterList(
            [torch.nn.Parameter(t.detach(), requires_grad=False) for t in extra if t is not None]
        )
        distributed.check_in_sync(holder, f"{type(self).__name__}'s weights after the update")
