"""DSRL: steer a frozen BC flow policy by learning its latent noise with off-policy RL.

DSRL ("Steering Your Diffusion Policy with Latent Space RL", Wagenmaker et al., 2025,
arXiv 2506.15799) keeps a behaviour-cloned flow policy fixed and learns which noise to
feed it. A :class:`~flowrl.policies.FlowActor` maps a latent w ∈ [−b, b]^Da and an
observation o to an action by its deterministic K-step ODE started at a⁰ = w:

    a = φ(w; o) = ``actor.sample(o, num_steps=K, noise=w, clip=True)``

(env units: the flow's normalized box [−1, 1]^Da maps to the env's bounds through the
actor's ``action_normalizer``). Seen from the latent, "env + frozen flow" is a new MDP
whose action is w; any off-policy learner trains on it unchanged. Here:

* :class:`LatentNoiseVecEnv` is that MDP: a ``VecEnvWrapper`` whose action space is the
  box [−b, b]^Da and whose ``step`` decodes w with the flow (all envs in one batched call);
* :class:`LatentSACPolicy` (:class:`LatentTD3Policy`) is SB3's SAC (TD3) policy that also
  owns the frozen flow, so the flow is saved and loaded with the model;
* :class:`DSRL` is SB3's ``SAC`` on that MDP (:class:`DSRLTD3`: ``TD3``): ``predict``
  takes raw observations and returns env actions, so ``evaluate_policy`` and flowrl's
  callbacks work unchanged, while the replay buffer stores latents.

w = 0 reproduces the BC policy's deterministic action exactly (flowrl's convention: the
deterministic action is the ODE from a⁰ = 0). Before ``learning_starts`` DSRL explores
with w ~ N(0, I) clipped to the box (``warmup="gaussian"``): the BC policy's own sampling,
as the official code's initial rollouts with the base policy (``init_rollout_steps``, after
which its SAC starts learning at once).

The official gym configs (ajwagen/dsrl, ``cfg/gym/dsrl_*.yaml``, algorithm ``dsrl_sac``)
use b = 1.5 (``action_magnitude``, the default here), ``target_entropy=0.0``,
``ent_coef="auto"``, ``gradient_steps=20`` (their ``utd``), ``train_freq=2``,
``batch_size=256``, ``learning_rate=3e-4``, ``tau=0.005`` and 3 × 128 tanh layers with
LayerNorm for actor and critic (``policy_kwargs=dict(net_arch=[128, 128, 128],
activation_fn=nn.Tanh, log_std_init=0.0)`` in stock SB3, which has no LayerNorm option).
:class:`DSRL` keeps SB3's own defaults (e.g. ``target_entropy="auto"`` = −Da); pass those
values to reproduce the paper's settings.

Example::

    model = DSRL("MlpPolicy", "Hopper-v5", actor="bc.pt", target_entropy=0.0,
                 gradient_steps=20, train_freq=2)
    model.learn(100_000)
    model.save("dsrl.zip")
    model = DSRL.load("dsrl.zip", env="Hopper-v5")  # the flow travels inside the zip

An SB3 ``.zip`` stores some objects pickled (SB3's format): load only files you trust.
The flow adds nothing to unpickle: its config is plain JSON in the zip's ``data`` and its
weights are in ``policy.pth``, which SB3 reads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import pickle
import zipfile
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm, maybe_make_env
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import GymEnv
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import Tensor

from flowrl.algos.common import check_total_timesteps, refuse_distributed
from flowrl.checkpoints import file_kind
from flowrl.policies.base import check_pretrained, check_spaces
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = [
    "DEFAULT_LATENT_BOUND",
    "DSRL",
    "DSRLTD3",
    "FrozenFlowPolicy",
    "LatentNoiseVecEnv",
    "LatentSACPolicy",
    "LatentSteering",
    "LatentTD3Policy",
    "decode_latent",
]

#: b of the latent box [−b, b]^Da (the official DSRL configs' ``action_magnitude``).
DEFAULT_LATENT_BOUND = 1.5
WARMUPS = ("gaussian", "uniform")

Array = np.ndarray | Tensor
SelfSteering = TypeVar("SelfSteering", bound="LatentSteering")


# ---------------------------------------------------------------------- checks


def check_latent_bound(latent_bound: float) -> float:
    """Return b as a float; raise unless it is a finite number > 0."""
    if (
        isinstance(latent_bound, bool)
        or not isinstance(latent_bound, (int, float, np.number))
        or not math.isfinite(latent_bound)
        or latent_bound <= 0
    ):
        raise ValueError(
            f"latent_bound must be a finite number > 0 (the latent box is [-b, b]^Da; the "
            f"official DSRL configs use 1.5), got {latent_bound!r}"
        )
    return float(latent_bound)


def check_flow_actor(actor: Any, source: str) -> FlowActor:
    """Return ``actor`` if it is a FlowActor whose network predicts a flow velocity.

    Raises:
        TypeError: For anything else (a diffusion actor's noise-prediction net included).
    """
    if not isinstance(actor, FlowActor):
        raise TypeError(
            f"{source} must be a FlowActor (or, for DSRL, the path of its checkpoint saved by "
            f"FlowActor.save), got a {type(actor).__name__}"
        )
    if actor.predicts != "velocity":
        raise TypeError(
            f"{source} is a {type(actor).__name__}, whose network predicts the "
            f"{actor.predicts} of a diffusion state, but DSRL steers the deterministic ODE of "
            "a FlowActor's velocity field: behaviour-clone a FlowActor (FlowBC) for it"
        )
    if type(actor) is not FlowActor:
        raise TypeError(
            f"{source} is a {type(actor).__name__}; DSRL saves and rebuilds its flow as a "
            "plain FlowActor: pass a FlowActor"
        )
    return actor


def frozen(actor: FlowActor) -> FlowActor:
    """``actor`` itself, in eval mode with every parameter's ``requires_grad`` off."""
    return actor.requires_grad_(False).eval()


# ---------------------------------------------------------------------- the latent map


def decode_latent(actor: FlowActor, obs: Array, latent: Array, num_steps: int) -> Array:
    """Env actions of latents: the flow's deterministic K-step ODE from a⁰ = w.

    ``actor.sample(obs, num_steps=K, noise=w, clip=True)`` under ``torch.no_grad``, in the
    actor's dtype and on its device (the actor's integrator, ``config.method``: Euler
    unless it says otherwise). This is DSRL's one decoding function: the env wrapper, the
    policy and ``predict`` all call it.

    Args:
        actor: The frozen flow (left in whatever mode it is in; DSRL keeps it in eval).
        obs: Raw observations, shape (B, Do) or (Do,).
        latent: Latents w, shape (B, Da) or (Da,) (one per observation).
        num_steps: K.

    Returns:
        Env actions, shape (B, Da) or (Da,) as ``latent``: a float numpy array if
        ``latent`` is a numpy array, else a tensor on the actor's device.

    Raises:
        ValueError: For non-finite latents or observations, or shapes that do not fit.
    """
    param = next(actor.parameters())
    as_numpy = not isinstance(latent, Tensor)
    obs_t = torch.as_tensor(obs, device=param.device).to(param.dtype)
    w = torch.as_tensor(latent, device=param.device).to(param.dtype)
    single = w.dim() == 1
    if single:
        obs_t, w = obs_t.reshape(1, -1), w.reshape(1, -1)
    if not torch.isfinite(w).all():
        raise ValueError("latents contain NaN or inf; check the latent policy's outputs")
    with torch.no_grad():
        actions = actor.sample(obs_t, num_steps, noise=w, clip=True)
    if single:
        actions = actions[0]
    return actions.cpu().numpy() if as_numpy else actions


class LatentNoiseVecEnv(VecEnvWrapper):
    """A VecEnv whose actions are a frozen flow's latent noise w ∈ [−b, b]^Da.

    ``step_async(w)`` clips w to the box, decodes all envs in one batched call
    (:func:`decode_latent` on the last observations) and steps the wrapped env with the
    resulting env actions. Observations, rewards and infos pass through unchanged.

    The wrapper decodes with ``actor`` itself and freezes it (eval mode, no gradients):
    pass a copy if the original must keep training. The flow's [−1, 1] box is the env's
    action box when its action normalizer was built by ``Normalizer.box`` for this env
    (as ``FlowBC.from_dataset(..., env=env)`` does); where the normalizer records bounds,
    they must equal the env's.

    Args:
        venv: The env, with raw observations (the flow normalizes them itself).
        actor: The BC :class:`~flowrl.policies.FlowActor` to steer.
        num_steps: K, the ODE steps (default: the actor's ``config.num_steps``).
        latent_bound: b, the half-width of the latent box.
        source: How error messages name the actor.

    Raises:
        TypeError: If ``venv`` is not a VecEnv or ``actor`` not a FlowActor.
        ValueError: For a non-Box or non-1-D space, an actor whose dims, action box, K or
            weights (NaN/inf) do not fit the env, ``latent_bound <= 0``, or a
            ``VecNormalize`` that normalizes observations (the flow needs raw ones).
    """

    def __init__(
        self,
        venv: VecEnv,
        actor: FlowActor,
        num_steps: int | None = None,
        latent_bound: float = DEFAULT_LATENT_BOUND,
        *,
        source: str = "the FlowActor",
    ):
        if not isinstance(venv, VecEnv):
            raise TypeError(
                f"LatentNoiseVecEnv wraps a VecEnv, got a {type(venv).__name__}: vectorize it "
                "first (stable_baselines3.common.env_util.make_vec_env or DummyVecEnv)"
            )
        bound = check_latent_bound(latent_bound)
        obs_dim, action_dim = check_spaces(venv.observation_space, venv.action_space)
        check_flow_actor(actor, source)
        num_steps = actor.config.num_steps if num_steps is None else num_steps
        actor.check_num_steps(num_steps)
        check_pretrained(actor, source, obs_dim, action_dim, venv.action_space)  # type: ignore[arg-type]
        inner: Any = venv
        while isinstance(inner, VecEnvWrapper):
            if isinstance(inner, VecNormalize) and inner.norm_obs:
                raise ValueError(
                    "the env is wrapped in VecNormalize(norm_obs=True), but the flow normalizes "
                    "raw observations itself: use VecNormalize(venv, norm_obs=False) (reward "
                    "normalization is fine)"
                )
            inner = inner.venv
        latent_space = spaces.Box(-bound, bound, (action_dim,), np.float32)
        super().__init__(venv, action_space=latent_space)
        self.actor = frozen(actor)
        self.num_steps = int(num_steps)
        self.latent_bound = bound
        self._last_obs: np.ndarray | None = None

    def decode(self, obs: Array, latent: Array) -> Array:
        """Env actions of latents ``latent`` at raw observations ``obs`` (:func:`decode_latent`)."""
        return decode_latent(self.actor, obs, latent, self.num_steps)

    def reset(self) -> VecEnvObs:
        """Reset the wrapped env and remember its observations."""
        obs = self.venv.reset()
        self._last_obs = obs  # type: ignore[assignment]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        """Decode latents (E, Da), clipped to the box, and send the env actions."""
        if self._last_obs is None:
            raise RuntimeError("LatentNoiseVecEnv: call reset() before step()")
        bound = self.latent_bound
        latent = np.clip(np.asarray(actions, dtype=np.float32), -bound, bound)
        latent = latent.reshape(self.num_envs, -1)
        self.venv.step_async(self.decode(self._last_obs, latent))  # type: ignore[arg-type]

    def step_wait(self) -> VecEnvStepReturn:
        """Step the wrapped env; remember its observations (the next episode's after a reset)."""
        obs, rewards, dones, infos = self.venv.step_wait()
        self._last_obs = obs  # type: ignore[assignment]
        return obs, rewards, dones, infos


# ---------------------------------------------------------------------- policies


class FrozenFlowPolicy:
    """Mixin for an SB3 off-policy policy that also owns DSRL's frozen flow (``self.flow``).

    The flow is rebuilt from ``flow_config`` (a :class:`FlowActorConfig` as a dict) and its
    weights and normalizer buffers come from the state dict, so it travels in every
    checkpoint. It is never trained: its parameters have ``requires_grad=False``, are in no
    optimizer (SB3's optimizers take the actor's and critic's parameters only) and it stays
    in eval mode whatever mode the policy is set to.

    The policy's own ``predict`` (SB3's) returns latents; :meth:`decode` maps them to env
    actions, and the learner's ``predict`` does both.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: The latent box [−b, b]^Da.
        lr_schedule: SB3's learning-rate schedule.
        flow_config: The flow's :class:`FlowActorConfig` fields.
        num_steps: K.
        latent_bound: b.
        dsrl_learner: The learner building it (its class name). The learner passes it at
            build time and never saves it in ``policy_kwargs``, so an SB3 algorithm's own
            ``load`` (e.g. ``SAC.load``) of a DSRL checkpoint is refused instead of giving a
            model whose ``predict`` returns latents.
        **kwargs: The SB3 policy's own arguments (``net_arch``, ``activation_fn``, …).

    Raises:
        TypeError: Without the flow's arguments (DSRL passes them; SB3's own algorithms
            do not).
        ValueError: If the spaces do not fit the flow.
    """

    flow: FlowActor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Any,
        *,
        flow_config: dict[str, Any] | None = None,
        num_steps: int | None = None,
        latent_bound: float | None = None,
        dsrl_learner: str | None = None,
        **kwargs: Any,
    ):
        if dsrl_learner is None or flow_config is None or num_steps is None or latent_bound is None:
            raise TypeError(
                f"{type(self).__name__} is built by a DSRL learner, which passes flow_config, "
                "num_steps, latent_bound and dsrl_learner; SB3's own algorithms do not (e.g. "
                "SAC.load of a DSRL checkpoint, whose predict would return latents, not env "
                "actions): create the model with DSRL(..., actor=...) and load its checkpoints "
                "with DSRL.load (DSRLTD3.load for DSRLTD3)"
            )
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)  # type: ignore[call-arg]
        known = {f.name for f in fields(FlowActorConfig)}
        config = FlowActorConfig(**{k: v for k, v in flow_config.items() if k in known})
        bound = check_latent_bound(latent_bound)
        obs_dim, action_dim = check_spaces(observation_space, action_space)
        if (config.obs_dim, config.action_dim) != (obs_dim, action_dim):
            raise ValueError(
                f"the flow has (Do, Da) = ({config.obs_dim}, {config.action_dim}) but the spaces "
                f"have ({obs_dim}, {action_dim})"
            )
        box = spaces.Box(-bound, bound, (action_dim,), np.float32)
        if not (
            np.array_equal(action_space.low, box.low)  # type: ignore[attr-defined]
            and np.array_equal(action_space.high, box.high)  # type: ignore[attr-defined]
        ):
            raise ValueError(f"the action space must be the latent box {box}, got {action_space}")
        self.flow = frozen(FlowActor(config))  # weights and normalizers: from the state dict
        self.flow.check_num_steps(num_steps)
        self.num_steps = int(num_steps)
        self.latent_bound = bound
        self.dsrl_learner = dsrl_learner

    def train(self, mode: bool = True) -> FrozenFlowPolicy:
        """Train/eval mode for the learned parts; the flow always stays in eval mode."""
        super().train(mode)  # type: ignore[misc]
        self.flow.eval()
        return self

    def decode(self, obs: Array, latent: Array) -> Array:
        """Env actions of latents at raw observations (:func:`decode_latent`)."""
        return decode_latent(self.flow, obs, latent, self.num_steps)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(
            flow_config=asdict(self.flow.config),
            num_steps=self.num_steps,
            latent_bound=self.latent_bound,
            dsrl_learner=self.dsrl_learner,
        )
        return data


class LatentSACPolicy(FrozenFlowPolicy, SACPolicy):
    """SB3's :class:`~stable_baselines3.sac.policies.SACPolicy` over latents, plus the frozen flow.

    See :class:`FrozenFlowPolicy` for the flow's arguments; the rest are SACPolicy's.
    """


class LatentTD3Policy(FrozenFlowPolicy, TD3Policy):
    """SB3's :class:`~stable_baselines3.td3.policies.TD3Policy` over latents, plus the frozen flow.

    See :class:`FrozenFlowPolicy` for the flow's arguments; the rest are TD3Policy's.
    """


# ---------------------------------------------------------------------- the learners

# Where a foreign SB3 zip's policy class lives -> the loader to name in the error.
_LOADERS = {
    "stable_baselines3.sac": "stable_baselines3.SAC.load",
    "stable_baselines3.td3": "stable_baselines3.TD3.load (or DDPG.load)",
    "stable_baselines3.dqn": "stable_baselines3.DQN.load",
    "stable_baselines3.common.policies": "stable_baselines3.PPO.load (or A2C.load)",
    "flowrl.policies.flow_policy": "flowrl.ReinFlow.load",
    "flowrl.policies.policyflow": "flowrl.PolicyFlow.load",
    "flowrl.policies.fpo": "flowrl.FPO.load",
    "flowrl.policies.diffusion": "flowrl.DPPO.load",
    "flowrl.policies.flow_sac": "flowrl.algos.FlowSAC.load",
}


def _learner_of(policy_class: type) -> str:
    """The DSRL learner whose policy ``policy_class`` is."""
    learners = {LatentSACPolicy: "DSRL", LatentTD3Policy: "DSRLTD3"}
    names = (name for base, name in learners.items() if issubclass(policy_class, base))
    return next(names, "its learner")


def _vectorize(env: GymEnv | str, verbose: int = 0) -> VecEnv:
    """An env id, gym.Env or VecEnv as a VecEnv (SB3's wrapping: Monitor + DummyVecEnv)."""
    return BaseAlgorithm._wrap_env(maybe_make_env(env, verbose), verbose, monitor_wrapper=True)


def _first_member(path: str) -> str | None:
    """The name in a zip file's first local header (at offset 0), if it starts with one."""
    with open(path, "rb") as file:
        header = file.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return None
        name_length = int.from_bytes(header[26:28], "little")
        return file.read(name_length).decode("utf-8", errors="replace")


def _inspect_checkpoint(path: str, learner: str) -> None:
    """Refuse a file that is not a DSRL zip before SB3 unpickles any of it.

    Reads only the zip listing and the ``data`` entry's JSON text.

    Raises:
        ValueError: Naming the file, what it is and which loader to use.
    """
    kind = file_kind(path)
    if kind == "torch" and _first_member(path) == "data":
        # A damaged SB3 zip: its end lost, the listing zipfile finds is that of the torch
        # archive nested in it (policy.pth), but the file starts with SB3's "data" entry.
        kind = "damaged"
    if kind == "torch":
        raise ValueError(
            f"{path!r} is a torch checkpoint, not a {learner} model .zip: a FlowActor saved by "
            f"FlowActor.save is the actor= argument of {learner}(...); a flowrl training "
            "checkpoint resumes with TrainingCheckpoint"
        )
    if kind != "sb3":
        raise ValueError(
            f"{path!r} is not a readable {learner} checkpoint: the file is damaged or truncated "
            "(e.g. copied or written only in part), or is not a Stable-Baselines3 .zip"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode())
    except (zipfile.BadZipFile, OSError, EOFError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"{path!r} is not a readable {learner} checkpoint: the file is damaged or truncated "
            f"({type(err).__name__}: {err})"
        ) from None
    policy_kwargs = data.get("policy_kwargs") if isinstance(data, dict) else None
    if isinstance(policy_kwargs, dict) and "flow_config" in policy_kwargs:
        return
    policy_class = data.get("policy_class") if isinstance(data, dict) else None
    module = policy_class.get("__module__", "") if isinstance(policy_class, dict) else ""
    loader = next(
        (name for prefix, name in _LOADERS.items() if str(module).startswith(prefix)),
        "the learner that saved it",
    )
    raise ValueError(
        f"{path!r} is not a {learner} checkpoint: it holds no frozen flow, it was saved by "
        f"another learner (its policy class comes from {module or 'an unknown module'}); load "
        f"it with {loader}"
    )


class LatentSteering:
    """Mixin that turns an SB3 off-policy algorithm into DSRL: it learns a flow's latent noise.

    Use it first in the bases, with a :class:`FrozenFlowPolicy` policy class, e.g.
    ``class DSRL(LatentSteering, SAC)`` with ``latent_policy_class = LatentSACPolicy``.

    The user's raw env is wrapped in :class:`LatentNoiseVecEnv`, so the algorithm's own
    machinery (rollouts, replay buffer, updates) runs unchanged on w. The flow lives in the
    policy (``model.flow``), which the wrapper shares. ``predict`` maps raw observations to
    env actions; ``latent_predict`` gives the latents. During training the replay buffer
    stores latents scaled to [−1, 1] (SB3's convention for Box actions).

    DSRL does not train data-parallel (SB3's own SAC/TD3 loop, without gradient averaging):
    under ``torchrun`` it refuses to be built; launch it as one process.

    Args:
        policy: ``"MlpPolicy"`` (the latent policy class) or a subclass of it.
        env: The raw env: an id, a gym.Env or a VecEnv (raw observations); None only when
            loading.
        actor: The frozen BC :class:`~flowrl.policies.FlowActor` or the path of its
            checkpoint (``FlowActor.save``; read without unpickling). A copy is kept.
        num_steps: K, the ODE steps (default: the actor's ``config.num_steps``).
        latent_bound: b; the latent box is [−b, b]^Da (default 1.5, as the official DSRL
            configs' ``action_magnitude``).
        warmup: Latents before ``learning_starts``: ``"gaussian"`` draws w ~ N(0, I)
            clipped to the box (the BC policy's own sampling), ``"uniform"`` samples the
            box uniformly (SB3's warm-up).
        **kwargs: The algorithm's own arguments, passed through unchanged.

    Raises:
        TypeError: Without ``actor`` (when building), or for an actor that is not a
            FlowActor.
        ValueError: For a bad ``latent_bound``/``warmup``/K, an env the flow cannot act in,
            an actor that does not fit the env or has non-finite weights, a policy class
            without the frozen flow, or ``policy_kwargs`` that set the flow's keys; under
            ``torchrun`` (DSRL does not train data-parallel), on every rank.
        FileNotFoundError: If ``actor`` names a file that does not exist.
    """

    latent_policy_class: ClassVar[type[FrozenFlowPolicy]]
    policy_aliases: ClassVar[dict[str, type]]
    policy: Any
    policy_kwargs: dict[str, Any]
    env: Any
    action_space: spaces.Box
    num_timesteps: int
    use_sde: bool
    use_sde_at_warmup: bool
    verbose: int
    _last_obs: Any

    def __init__(
        self,
        policy: str | type,
        env: GymEnv | str | None,
        *,
        actor: FlowActor | str | os.PathLike | None = None,
        num_steps: int | None = None,
        latent_bound: float = DEFAULT_LATENT_BOUND,
        warmup: str = "gaussian",
        **kwargs: Any,
    ):
        refuse_distributed(self)
        self._check_policy_class(policy, loading=env is None)
        if warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
        self.warmup = warmup
        if env is not None:
            env = self._latent_env(env, actor, num_steps, latent_bound, kwargs)
        super().__init__(policy, env, **kwargs)  # type: ignore[call-arg]

    def _check_policy_class(self, policy: str | type, loading: bool) -> None:
        """Refuse a policy without the frozen flow, or the policy of another DSRL learner."""
        policy_class = (
            self.policy_aliases.get(policy, policy) if isinstance(policy, str) else policy
        )
        expected = self.latent_policy_class.__name__
        if not (isinstance(policy_class, type) and issubclass(policy_class, FrozenFlowPolicy)):
            raise ValueError(
                f"{type(self).__name__} needs a policy that owns the frozen flow ({expected}, "
                f"alias 'MlpPolicy'), got {policy_class!r}"
            )
        if not issubclass(policy_class, self.latent_policy_class):
            fix = (
                f"this checkpoint is of another DSRL learner: load it with "
                f"{_learner_of(policy_class)}.load"
                if loading
                else "use policy='MlpPolicy'"
            )
            raise ValueError(
                f"{type(self).__name__} takes a {expected}, got a {policy_class.__name__}: {fix}"
            )

    def _latent_env(
        self,
        env: GymEnv | str,
        actor: FlowActor | str | os.PathLike | None,
        num_steps: int | None,
        latent_bound: float,
        kwargs: dict[str, Any],
    ) -> LatentNoiseVecEnv:
        """The user's env wrapped with a frozen copy of ``actor``.

        The flow's entries (config, K, b) are added to ``kwargs["policy_kwargs"]``.
        """
        if actor is None:
            raise TypeError(
                f"{type(self).__name__} needs actor=: the BC FlowActor to steer, or the path of "
                "its checkpoint (FlowActor.save)"
            )
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        reserved = {"flow_config", "num_steps", "latent_bound", "dsrl_learner"}
        if reserved & policy_kwargs.keys():
            raise ValueError(
                f"policy_kwargs may not set {sorted(reserved & policy_kwargs.keys())}: the flow "
                f"comes from actor=, K from num_steps= and b from latent_bound= of "
                f"{type(self).__name__}"
            )
        source = "the actor"
        if isinstance(actor, (str, os.PathLike)):
            source = f"the actor checkpoint {os.fspath(actor)!r}"
            actor = FlowActor.load(actor)
        check_flow_actor(actor, source)
        actor = copy.deepcopy(actor).cpu()
        latent_env = LatentNoiseVecEnv(
            _vectorize(env, kwargs.get("verbose", 0)), actor, num_steps, latent_bound, source=source
        )
        policy_kwargs.update(
            flow_config=asdict(actor.config),
            num_steps=latent_env.num_steps,
            latent_bound=latent_env.latent_bound,
        )
        kwargs["policy_kwargs"] = policy_kwargs
        return latent_env

    # ------------------------------------------------------------------ the flow

    @property
    def flow(self) -> FlowActor:
        """The frozen flow (the policy's; the env wrapper decodes with the same module)."""
        return self.policy.flow

    @property
    def num_steps(self) -> int:
        """K, the ODE steps of the latent map."""
        return self.policy.num_steps

    @property
    def latent_bound(self) -> float:
        """b, the half-width of the latent box."""
        return self.policy.latent_bound

    def _setup_model(self) -> None:
        # The policy learns who builds it from a key that is never saved (see FrozenFlowPolicy).
        saved = self.policy_kwargs
        self.policy_kwargs = {**saved, "dsrl_learner": type(self).__name__}
        try:
            super()._setup_model()  # type: ignore[misc]
        finally:
            self.policy_kwargs = saved
        if isinstance(self.env, LatentNoiseVecEnv):
            # Building: the policy's flow takes the actor's weights and the wrapper shares it.
            self.policy.flow.load_state_dict(self.env.actor.state_dict())
            self.env.actor = self.policy.flow

    def set_env(self, env: GymEnv | str, force_reset: bool = True) -> None:
        """Use a new raw env (an id, gym.Env or VecEnv); it is wrapped with the model's flow.

        Raises:
            ValueError: If the flow does not fit the env, or for a
                :class:`LatentNoiseVecEnv` decoding with another flow (pass the raw env).
        """
        if isinstance(env, LatentNoiseVecEnv):
            if env.actor is not self.flow:
                raise ValueError(
                    "this LatentNoiseVecEnv decodes with another flow than the model's: pass the "
                    "raw env, the model wraps it with its own flow"
                )
            latent = env
        else:
            latent = LatentNoiseVecEnv(
                _vectorize(env, self.verbose),
                self.flow,
                self.num_steps,
                self.latent_bound,
                source=f"the {type(self).__name__} model's flow",
            )
        super().set_env(latent, force_reset=force_reset)  # type: ignore[misc]

    # ------------------------------------------------------------------ acting

    def latent_predict(self, observation: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Latents w ∈ [−b, b]^Da of the learned policy at raw observations.

        Args:
            observation: Raw observations, shape (Do,) or (B, Do).
            deterministic: The policy's mode instead of a sample.

        Returns:
            Latents, shape (Da,) or (B, Da).
        """
        latent, _ = self.policy.predict(observation, deterministic=deterministic)
        return latent

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Env actions at raw observations: the learned latent, decoded by the frozen flow.

        Args:
            observation: Raw observations, shape (Do,) or (B, Do).
            state: Unused (SB3's signature).
            episode_start: Unused (SB3's signature).
            deterministic: Decode the latent policy's mode instead of a sample.

        Returns:
            Env actions, shape (Da,) or (B, Da), and ``state``.
        """
        latent, state = self.policy.predict(observation, state, episode_start, deterministic)
        return self.policy.decode(observation, latent), state

    def _warmup_latent(self, n_envs: int) -> np.ndarray:
        """Latents (E, Da) before ``learning_starts`` (see ``warmup``), from the seeded space."""
        space = self.action_space
        if self.warmup == "uniform":
            return np.stack([space.sample() for _ in range(n_envs)])
        draw = space.np_random.standard_normal((n_envs, *space.shape))
        return np.clip(draw, space.low, space.high).astype(space.dtype)

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The latent to step the wrapped env with, and the same latent scaled to [−1, 1].

        SB3's ``_sample_action`` would call :meth:`predict`, which returns env actions; the
        learner needs latents. Warm-up latents follow ``warmup`` (SB3's gSDE warm-up
        option aside); afterwards the latent policy samples. Action noise (TD3) is added
        in the scaled space and clipped to it.
        """
        warming_up = self.num_timesteps < learning_starts
        if warming_up and not (self.use_sde and self.use_sde_at_warmup):
            latent = self._warmup_latent(n_envs)
        else:
            latent = self.latent_predict(self._last_obs, deterministic=False)
        scaled = self.policy.scale_action(latent)
        if action_noise is not None:
            scaled = np.clip(scaled + action_noise(), -1.0, 1.0)
        return self.policy.unscale_action(scaled), scaled

    # ------------------------------------------------------------------ training

    def learn(
        self: SelfSteering,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int = 4,
        tb_log_name: str | None = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSteering:
        """The algorithm's ``learn``; the TensorBoard run is named after the learner.

        Raises:
            ValueError: If ``total_timesteps`` is not a positive integer.
        """
        check_total_timesteps(total_timesteps)
        return super().learn(  # type: ignore[misc]
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name or type(self).__name__,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfSteering],
        path: str | os.PathLike | io.BufferedIOBase,
        env: GymEnv | str | None = None,
        device: torch.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfSteering:
        """SB3's ``load``, with the frozen flow, the env wrapped again and clear errors.

        The flow is rebuilt from the checkpoint (config in ``policy_kwargs``, weights and
        normalizer buffers in the policy's state dict). ``env`` is the raw env (an id,
        gym.Env or VecEnv); it is wrapped in :class:`LatentNoiseVecEnv` with the loaded flow.

        An SB3 ``.zip`` stores some objects pickled (SB3's format): load only files you
        trust. Before SB3 reads anything, the file's zip listing and JSON header are checked,
        so another learner's zip or a damaged file is refused unread.

        Raises:
            FileNotFoundError: If neither ``path`` nor ``path + ".zip"`` exists.
            ValueError: If the file is damaged or truncated, is not an SB3 zip, or is the
                checkpoint of another learner (the message names the loader to use); or if
                the flow does not fit ``env``.
        """
        fixed = {"actor", "num_steps", "latent_bound"} & kwargs.keys()
        if fixed:
            raise ValueError(
                f"{cls.__name__}.load takes no {sorted(fixed)}: the checkpoint fixes the flow, "
                "K and the latent box"
            )
        if isinstance(path, (str, os.PathLike)):
            name = os.fspath(path)
            if not os.path.isfile(name) and os.path.isfile(name + ".zip"):
                name += ".zip"
            if not os.path.isfile(name):
                tried = "" if name.endswith(".zip") else f" (nor {name}.zip)"
                raise FileNotFoundError(f"no {cls.__name__} checkpoint at {name!r}{tried}")
            _inspect_checkpoint(name, cls.__name__)
            path, shown = name, repr(name)
        else:
            shown = repr(path)
        venv = None
        if env is not None:
            venv = _vectorize(env, kwargs.get("verbose", 0))
            kwargs["n_envs"] = venv.num_envs  # before the replay buffer is built
        try:
            model = super().load(  # type: ignore[misc]
                path,
                env=None,
                device=device,
                custom_objects=custom_objects,
                print_system_info=print_system_info,
                force_reset=force_reset,
                **kwargs,
            )
        except (
            zipfile.BadZipFile,
            EOFError,
            AssertionError,
            KeyError,
            RuntimeError,
            pickle.UnpicklingError,
        ) as err:
            first = str(err).splitlines()[0] if str(err) else "no detail"
            raise ValueError(
                f"{shown} is not a readable {cls.__name__} checkpoint: the file is damaged, "
                f"truncated or altered ({type(err).__name__}: {first})"
            ) from None
        except ValueError as err:
            if not isinstance(err.__cause__, zipfile.BadZipFile):  # SB3's zip error, else ours
                raise
            raise ValueError(
                f"{shown} is not a readable {cls.__name__} checkpoint: the file is damaged, "
                f"truncated or altered ({err.__cause__})"
            ) from None
        if venv is not None:
            model.set_env(venv, force_reset=force_reset)
        return model


class DSRL(LatentSteering, SAC):
    """DSRL with SAC (the paper's DSRL-SAC): SB3's ``SAC`` learning a frozen flow's latent noise.

    ``DSRL(policy, env, *, actor, num_steps=None, latent_bound=1.5, warmup="gaussian",
    **sac_kwargs)``: see :class:`LatentSteering` for the DSRL arguments; every other keyword
    is SB3 ``SAC``'s, with SAC's defaults (``learning_rate=3e-4``, ``buffer_size=1e6``,
    ``learning_starts=100``, ``batch_size=256``, ``train_freq=1``, ``gradient_steps=1``,
    ``ent_coef="auto"``, ``target_entropy="auto"`` = −Da, 2 × 256 ReLU layers). The
    official gym configs instead use ``target_entropy=0.0``, ``gradient_steps=20``,
    ``train_freq=2`` and ``policy_kwargs=dict(net_arch=[128, 128, 128],
    activation_fn=nn.Tanh, log_std_init=0.0)`` (plus LayerNorm, which stock SB3 lacks).

    ``model.actor`` is SAC's Gaussian actor over latents (SB3's alias); the frozen flow is
    ``model.flow``.
    """

    latent_policy_class = LatentSACPolicy
    policy_aliases: ClassVar[dict[str, type]] = {"MlpPolicy": LatentSACPolicy}  # type: ignore[assignment]


class DSRLTD3(LatentSteering, TD3):
    """DSRL with TD3: SB3's ``TD3`` learning a frozen flow's latent noise.

    See :class:`LatentSteering` for the DSRL arguments; every other keyword is SB3 ``TD3``'s
    (exploration comes from ``action_noise``, added in the scaled latent box).
    """

    latent_policy_class = LatentTD3Policy
    policy_aliases: ClassVar[dict[str, type]] = {"MlpPolicy": LatentTD3Policy}  # type: ignore[assignment]
