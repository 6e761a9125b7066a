"""What every SB3 flow policy of an on-policy learner shares.

:class:`FlowPolicyBase` holds a :class:`~flowrl.policies.FlowActor` (fresh, or a copy of a
BC checkpoint), a frozen copy of the starting actor (the reference that W2/BC regularizers
and comparisons use), the K of THE time grid, the chain start a⁰ ~ N(0, c²I), a value
network, and two optimizers (actor side and critic). Subclasses add their noise model:

* :class:`~flowrl.policies.FlowPolicy` (ReinFlow) — learned noise on every Euler step;
* :class:`~flowrl.policies.PolicyFlowPolicy` (PolicyFlow) — Gaussian noise on the endpoint.

Both act in the normalized action box [−1, 1]^Da and map to the env's bounds at the edge.
"""

from __future__ import annotations

import copy
import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from flowrl.compile import CompiledPaths, check_compile
from flowrl.data.normalizers import Normalizer
from flowrl.flow.integrators import gaussian_log_prob, integrate
from flowrl.flow.times import Steps, TimeGrid, as_steps, num_steps_of, steps_to_plain
from flowrl.nets.mlp import ACTIVATIONS, MLP
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

__all__ = ["FlowPolicyBase", "check_pretrained", "check_spaces", "sb3_architecture"]


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> tuple[int, int]:
    """Check that flow policies can act in these spaces; return (Do, Da).

    Raises:
        ValueError: For non-Box action spaces (discrete, multi-discrete, dict) and for
            observations that are not flat vectors (images need an encoder first).
    """
    if not isinstance(action_space, spaces.Box) or len(action_space.shape) != 1:
        raise ValueError(
            f"flowrl's flow policies need a continuous 1-D Box action space, got {action_space}. "
            "For discrete actions use a categorical policy (e.g. SB3's PPO)."
        )
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(
            f"flow policies need a flat Box observation space, got {observation_space}: flatten "
            "dict observations first (gymnasium.wrappers.FlattenObservation)."
        )
    if len(observation_space.shape) != 1:
        raise ValueError(
            f"flow policies take flat vector observations, got shape {observation_space.shape}: "
            "image observations need an encoder (a CNN features extractor) that flowrl's "
            "flow policies do not include yet; encode or flatten the observations first."
        )
    return int(observation_space.shape[0]), int(action_space.shape[0])


def check_sigma_bounds(sigma_min: float, sigma_max: float) -> None:
    """Raise unless 0 < sigma_min <= sigma_max (both finite numbers)."""
    if not (0 < sigma_min <= sigma_max < float("inf")):
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def check_pretrained(
    actor: FlowActor, source: str, obs_dim: int, action_dim: int, action_space: spaces.Box
) -> None:
    """Check that a pretrained actor was made for this env and holds finite weights.

    Three checks:

    * dims: the actor's (Do, Da) are the env's;
    * action box: where the actor's action normalizer records raw bounds (it does when
      built by ``Normalizer.box``, as ``FlowBC.from_dataset(..., env=env)`` and fresh
      policies build it), they must equal the env's ``action_space.low``/``high``
      (``np.allclose``, rtol 1e-5, atol 1e-6), since the flow's [−1, 1] box is then that
      box. A normalizer without bounds (identity, or fitted to a dataset's action range
      without an env) records no box, so there is nothing to compare;
    * finite weights: no NaN/inf in any parameter or buffer (a normalizer's unset ±inf
      bounds excepted; NaN is refused there too).

    Args:
        actor: The pretrained actor.
        source: How errors name it, e.g. "the pretrained checkpoint 'bc.pt'".
        obs_dim: The env's Do.
        action_dim: The env's Da.
        action_space: The env's Box action space.

    Raises:
        ValueError: Naming ``source`` and what does not match.
    """
    if (actor.config.obs_dim, actor.config.action_dim) != (obs_dim, action_dim):
        raise ValueError(
            f"the pretrained actor has (Do, Da) = ({actor.config.obs_dim}, "
            f"{actor.config.action_dim}) but the env has ({obs_dim}, {action_dim}): was it "
            f"trained on another task? ({source})"
        )
    bounds = {
        "low": (actor.action_normalizer.low, action_space.low),
        "high": (actor.action_normalizer.high, action_space.high),
    }
    for name, (ours, env) in bounds.items():
        ours = ours.detach().cpu().double().numpy()
        env = np.broadcast_to(np.asarray(env, dtype=np.float64), ours.shape)
        recorded = np.isfinite(ours)
        if not np.allclose(ours[recorded], env[recorded], rtol=1e-5, atol=1e-6):
            low = actor.action_normalizer.low.tolist()
            high = actor.action_normalizer.high.tolist()
            raise ValueError(
                f"{source} was trained for another action box: its action normalizer maps "
                f"low={low}, high={high} to [-1, 1], but the env's action space has "
                f"low={action_space.low.tolist()}, high={action_space.high.tolist()} ({name} "
                "differs). Pretrain on this env (FlowBC.from_dataset(data, env=env)) or use "
                "the env the actor was trained for"
            )
    normalizer_bounds = {
        f"{prefix}.{bound}" if prefix else bound
        for prefix, module in actor.named_modules()
        if isinstance(module, Normalizer)
        for bound in ("low", "high")
    }
    tensors = list(actor.named_parameters()) + list(actor.named_buffers())
    for name, tensor in tensors:
        if not torch.is_floating_point(tensor):
            continue
        bad = torch.isnan(tensor) if name in normalizer_bounds else ~torch.isfinite(tensor)
        if bad.any():
            raise ValueError(
                f"{source} has non-finite values (NaN or inf) in {name!r} ({int(bad.sum())} of "
                f"{tensor.numel()} entries): the run that made it diverged or the file is "
                "damaged; use an earlier checkpoint or pretrain again"
            )


DEFAULT_VALUE_HIDDEN = (256, 256)


def policy_options(cls: type) -> list[str]:
    """The keyword arguments a flow policy class takes (its own and the base's), sorted."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.startswith("stable_baselines3"):
            continue
        for name, param in inspect.signature(init).parameters.items():
            if param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                names.add(name)
    internal = {"self", "observation_space", "action_space", "lr_schedule", "use_sde"}
    return sorted(names - internal)


def sb3_architecture(
    net_arch: list[int] | dict[str, list[int]] | None,
    activation_fn: type[nn.Module] | None,
    actor_config: dict[str, Any] | None,
    value_hidden: tuple[int, ...] | None,
    value_act: str,
) -> tuple[dict[str, Any], tuple[int, ...], str]:
    """SB3's ``net_arch``/``activation_fn`` translated into flowrl's own knobs.

    ``net_arch`` is SB3's: a list of widths for both networks, or ``dict(pi=[...],
    vf=[...])``. ``pi`` is the velocity net, a residual MLP of ``depth`` blocks of one
    ``width``, so it must repeat one width (``[256, 256, 256]`` → width 256, depth 3);
    ``vf`` is the critic's hidden widths. ``activation_fn`` (a ``torch.nn`` class, as in SB3)
    is the activation of both. Each may not contradict the flowrl knob it maps to.

    Returns:
        ``(actor_config, value_hidden, value_act)``.

    Raises:
        ValueError: For a ``net_arch`` the actor cannot take, an unsupported activation, or
            a contradiction with ``actor_config``/``value_hidden``.
    """
    actor_config = dict(actor_config or {})
    pi = vf = None
    if net_arch is not None:
        if isinstance(net_arch, dict):
            extra = set(net_arch) - {"pi", "vf"}
            if extra:
                raise ValueError(f"net_arch takes the keys 'pi' and 'vf', got {sorted(extra)}")
            pi, vf = net_arch.get("pi"), net_arch.get("vf")
        else:
            pi = vf = list(net_arch)
    if pi is not None:
        if not pi or len(set(pi)) != 1:
            raise ValueError(
                f"net_arch pi={list(pi)}: the velocity net is a residual MLP of `depth` blocks of "
                "one `width`, so pi must repeat one width, e.g. pi=[256, 256, 256] (or set "
                "actor_config=dict(width=..., depth=...))"
            )
        _merge(actor_config, {"width": int(pi[0]), "depth": len(pi)}, "net_arch pi")
    if vf is not None:
        if value_hidden is not None and tuple(value_hidden) != tuple(vf):
            raise ValueError(f"net_arch vf={list(vf)} contradicts value_hidden={value_hidden}")
        value_hidden = tuple(int(w) for w in vf)
    if activation_fn is not None:
        names = [name for name, klass in ACTIVATIONS.items() if klass is activation_fn]
        if not names:
            supported = ", ".join(f"nn.{klass.__name__}" for klass in ACTIVATIONS.values())
            raise ValueError(f"activation_fn={activation_fn!r} is not supported; use {supported}")
        _merge(actor_config, {"act": names[0]}, "activation_fn")
        value_act = names[0]
    return actor_config, tuple(value_hidden or DEFAULT_VALUE_HIDDEN), value_act


def _merge(config: dict[str, Any], values: dict[str, Any], source: str) -> None:
    for key, value in values.items():
        if key in config and config[key] != value:
            raise ValueError(f"{source} sets {key}={value!r} but actor_config has {config[key]!r}")
        config[key] = value


def check_actor_config(pretrained: FlowActor, actor_config: dict[str, Any]) -> None:
    """Refuse an ``actor_config`` that contradicts the pretrained actor (it would be ignored).

    The velocity net comes from the checkpoint; fields equal to the checkpoint's pass.

    Raises:
        ValueError: Naming each differing field.
    """
    config = asdict(pretrained.config)
    differing = {k: (v, config.get(k)) for k, v in actor_config.items() if config.get(k) != v}
    if differing:
        shown = ", ".join(
            f"{k}={ours!r} (the actor has {theirs!r})" for k, (ours, theirs) in differing.items()
        )
        raise ValueError(
            f"actor_config contradicts the pretrained actor: {shown}. The velocity net comes "
            "from the checkpoint, so these would be ignored: drop them (use num_steps= for K)"
        )


def _default_optimizer_kwargs(
    optimizer_class: type[torch.optim.Optimizer], kwargs: dict[str, Any] | None
) -> dict[str, Any]:
    """The optimizer arguments, with Adam/AdamW fused unless the caller chose otherwise."""
    kwargs = dict(kwargs or {})
    if optimizer_class in (torch.optim.Adam, torch.optim.AdamW) and not (
        {"fused", "foreach"} & kwargs.keys()
    ):
        kwargs["fused"] = True
    return kwargs


class FlowPolicyBase(BasePolicy):
    """A flow actor, its frozen reference copy, a value network and their optimizers.

    Args:
        observation_space: Flat Box observations (Do,).
        action_space: Box actions (Da,).
        lr_schedule: Learning-rate schedule of the actor side.
        actor_config: :class:`FlowActorConfig` fields for a fresh actor (ignored when
            ``pretrained`` is given; dims come from the spaces).
        pretrained: A BC-pretrained :class:`FlowActor` or the path of its checkpoint. The
            policy starts from a copy and keeps a frozen copy as ``reference``; both travel
            in every SB3 checkpoint. It must fit the env (dims, action box) and have finite
            weights (:func:`check_pretrained`).
        num_steps: K, Euler steps on THE time grid (default: the actor's), or a
            :class:`~flowrl.flow.times.TimeGrid` (e.g. a BOSS grid; a knot list, as
            checkpoints store it, is read as one); for a shortcut actor one of the uniform
            step counts it was trained for (1, 2, 4, …, M). The grid is kept as
            :attr:`grid` (what every sampler and likelihood of the policy walks) and its K
            as :attr:`num_steps` (an int, for shapes).
        initial_std: Standard deviation c of the chain start a⁰ ~ N(0, c²I) in stochastic
            rollouts (0: every chain starts at a⁰ = 0, the deterministic ODE's start).
        value_hidden: Hidden widths of the value network.
        optimizer_class: Optimizer of both sides.
        optimizer_kwargs: Extra optimizer arguments. For Adam and AdamW the default adds
            ``fused=True`` (unless ``fused`` or ``foreach`` is given): one kernel updates all
            parameter tensors, where PyTorch's CPU default loops over them in Python (a
            velocity net's Adam step: 0.46 ms fused vs 1.72 ms, width 64, measured); the
            arithmetic is Adam's either way.
        compile: Run the policy's hot paths (:attr:`compiled_methods`: the rollout step, the
            scoring of stored samples, the deterministic action) through ``torch.compile``:
            True (mode ``"default"``) or a mode name (``"reduce-overhead"`` adds CUDA graphs
            on GPU). Compiles on first use; falls back to eager with a warning where
            compilation is unavailable (:mod:`flowrl.compile`). False: eager.
        use_sde: Never pass it: SB3's own algorithms do, so a flowrl checkpoint loaded by
            ``PPO.load`` is refused with a message naming the right loader.

    Subclasses build their noise model in :meth:`_build_noise` (called after the actor and
    before the critic) and list the actor side's parameters in :meth:`_actor_parameters`;
    :meth:`_build_critic` makes the value network (an off-policy policy builds Q-critics).

    Raises:
        ValueError: For spaces flow policies cannot act in, a negative ``initial_std``, a bad
            K (or one a shortcut actor was not trained for), an actor whose ``method`` is not
            ``"euler"`` (the chain is defined for Euler steps), or a pretrained actor that
            does not fit the env or has non-finite weights.
        FileNotFoundError: If ``pretrained`` names a file that does not exist.
        TypeError: If ``pretrained`` is neither a :class:`FlowActor` nor a path.
    """

    #: Whether the critic is off-policy (Q-critics of a replay-buffer learner) or a value net.
    off_policy: ClassVar[bool] = False
    #: Pure tensor methods that ``compile=True`` runs through ``torch.compile`` (called via
    #: :meth:`_fast`); a policy without any runs eagerly whatever ``compile`` says.
    compiled_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        actor_config: dict[str, Any] | None = None,
        pretrained: FlowActor | str | os.PathLike | None = None,
        num_steps: int | TimeGrid | Sequence[float] | None = None,
        initial_std: float = 0.0,
        value_hidden: tuple[int, ...] | None = None,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] | None = None,
        value_act: str = "tanh",
        compile: bool | str = False,  # noqa: A002 (the option's name, as in torch.compile)
        use_sde: bool | None = None,
        **unknown: Any,
    ):
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown policy_kwargs {sorted(unknown)}; its options "
                f"are {', '.join(policy_options(type(self)))}. The velocity net is set by "
                "actor_config (width, depth, time_dim, act, num_steps, ...; or SB3's net_arch pi "
                "and activation_fn), the critic by value_hidden (or net_arch vf)."
            )
        if use_sde is not None:  # only SB3's own algorithms pass it (PPO.load of our zip)
            raise ValueError(
                f"{type(self).__name__} is a flowrl flow policy, built here by an SB3 algorithm "
                "(e.g. PPO.load or A2C.load of a flowrl checkpoint): load such a checkpoint "
                "with the flowrl learner that saved it, e.g. ReinFlow.load(path) or "
                "PolicyFlow.load(path)"
            )
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=_default_optimizer_kwargs(optimizer_class, optimizer_kwargs),
        )
        obs_dim, action_dim = check_spaces(observation_space, action_space)
        self.set_compile(compile)
        if not initial_std >= 0:
            raise ValueError(f"initial_std must be >= 0, got {initial_std}")
        self.initial_std = float(initial_std)
        actor_config, value_hidden, value_act = sb3_architecture(
            net_arch, activation_fn, actor_config, value_hidden, value_act
        )
        self.actor = self._make_actor(obs_dim, action_dim, actor_config, pretrained, action_space)
        self._check_method(self.actor)
        # Frozen copy of the starting flow: the anchor of the W2 regularizer.
        self.reference = copy.deepcopy(self.actor).requires_grad_(False).eval()
        #: THE grid of this policy: an int K (uniform) or a TimeGrid; every chain, likelihood
        #: and ODE of the policy walks it. ``num_steps`` is its K, for shapes and counts.
        self.grid: Steps = (
            as_steps(num_steps) if num_steps is not None else self.actor.config.num_steps
        )
        self.num_steps = num_steps_of(self.grid)  # validates K early
        self.actor.check_num_steps(self.grid)  # a shortcut actor's trained uniform K only
        self._build_noise(obs_dim, action_dim)
        self.value_hidden = tuple(value_hidden)
        self.value_act = value_act
        self._build_critic(obs_dim, action_dim)
        self.optimizer = self.optimizer_class(
            self._actor_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )
        # The learner sets the critic's learning rate (it may differ from the actor's).
        self.critic_optimizer = self.optimizer_class(
            self._critic_parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _build_critic(self, obs_dim: int, action_dim: int) -> None:
        """Create the critic: a value network V(o) of ``value_hidden`` (on-policy learners).

        Off-policy policies override it with action-value critics (see
        :class:`~flowrl.policies.FlowSACPolicy`).
        """
        self.value_net = MLP(obs_dim, 1, self.value_hidden, act=self.value_act)

    def _critic_parameters(self) -> list[nn.Parameter]:
        """Parameters the critic optimizer steps."""
        return list(self.value_net.parameters())

    def _build_noise(self, obs_dim: int, action_dim: int) -> None:
        """Create the noise model's modules (subclasses)."""
        raise NotImplementedError

    def _actor_parameters(self) -> list[nn.Parameter]:
        """Parameters the actor optimizer steps, in a fixed order (subclasses)."""
        raise NotImplementedError

    def _check_method(self, actor: FlowActor) -> None:
        """Refuse an actor configured for another integrator than Euler.

        The flow policies integrate Euler steps on THE grid, and the chain likelihood
        (ReinFlow) and the ratio estimate (PolicyFlow) are defined for exactly those steps,
        so a ``method`` of ``"midpoint"`` or ``"heun"`` would be silently ignored.
        """
        method = actor.config.method
        if method != "euler":
            raise ValueError(
                f"{type(self).__name__} integrates Euler steps on THE time grid (its chain "
                "likelihood and ratio are defined for Euler steps), but the actor's "
                f"config.method is {method!r}, which it would ignore. The BC objective does "
                "not depend on the method, so switching is lossless: set actor.config.method "
                '= "euler" before building the policy (for a checkpoint: actor = '
                'FlowActor.load(path); actor.config.method = "euler"; actor.save(path)), or '
                'pass actor_config=dict(method="euler")'
            )

    def _make_actor(
        self,
        obs_dim: int,
        action_dim: int,
        actor_config: dict[str, Any] | None,
        pretrained: FlowActor | str | os.PathLike | None,
        action_space: spaces.Box,
    ) -> FlowActor:
        """A copy of the pretrained actor (checked) or a fresh one for these spaces.

        A pretrained actor must be one this policy can drive (:meth:`_accept_pretrained`),
        match the env's dims and action box and have finite weights (:func:`check_pretrained`),
        and ``actor_config`` may not contradict it (:func:`check_actor_config`); the checkpoint
        is read once. Subclasses choose the fresh actor's class (:meth:`_fresh_actor_class`),
        the checkpoint reader (:meth:`_load_pretrained`) and what they accept.
        """
        if pretrained is None:
            fields = dict(actor_config or {})
            fields.update(obs_dim=obs_dim, action_dim=action_dim)
            return self._fresh_actor_class()(
                FlowActorConfig(**fields),
                Normalizer.identity(obs_dim),
                Normalizer.box(action_space.low, action_space.high),
            )
        if isinstance(pretrained, FlowActor):
            actor, source = pretrained, f"the pretrained {type(pretrained).__name__}"
        elif isinstance(pretrained, (str, os.PathLike)):
            actor = self._load_pretrained(pretrained)
            source = f"the pretrained checkpoint {os.fspath(pretrained)!r}"
        else:
            raise TypeError(
                f"pretrained must be {self._pretrained_kinds} or the path of its checkpoint "
                f"(.save), got a {type(pretrained).__name__}"
            )
        self._accept_pretrained(actor, source)
        if actor_config:
            check_actor_config(actor, actor_config)
        check_pretrained(actor, source, obs_dim, action_dim, action_space)
        # A BC trainer's EMA actor is frozen (requires_grad=False): the copy must train.
        return copy.deepcopy(actor).cpu().requires_grad_(True).train()

    #: What ``pretrained`` may be, for the TypeError of anything else.
    _pretrained_kinds: ClassVar[str] = "a FlowActor"

    def _fresh_actor_class(self) -> type[FlowActor]:
        """The actor class built when no pretrained actor is given."""
        return FlowActor

    def _load_pretrained(self, path: str | os.PathLike) -> FlowActor:
        """Read a pretrained actor checkpoint."""
        return FlowActor.load(path)

    def _accept_pretrained(self, actor: FlowActor, source: str) -> None:
        """Refuse an actor this policy cannot drive: a flow policy needs a velocity network."""
        if actor.predicts != "velocity":
            raise TypeError(
                f"{source} is a {type(actor).__name__}, whose network predicts the "
                f"{actor.predicts} of a diffusion state, not a flow velocity: fine-tune it "
                "with DPPO (DiffusionPolicy), or behaviour-clone a FlowActor for this learner"
            )

    @classmethod
    def from_pretrained(
        cls,
        pretrained: FlowActor | str | os.PathLike,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        learning_rate: float = 3e-4,
        **kwargs: Any,
    ) -> FlowPolicyBase:
        """Build a policy from a BC checkpoint (or actor) in one call.

        Args:
            pretrained: :class:`FlowActor` or the path of its checkpoint.
            observation_space: The env's observation space.
            action_space: The env's action space.
            learning_rate: Constant actor learning rate.
            **kwargs: Other constructor arguments (``num_steps``, noise bounds, …).

        Returns:
            The policy.
        """
        return cls(
            observation_space,
            action_space,
            lambda _: learning_rate,
            pretrained=pretrained,
            **kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        # Everything needed to rebuild the modules; the weights (the pretrained actor, the
        # reference and the normalizers included) come from the state dict.
        data = super()._get_constructor_parameters()
        data.pop("normalize_images", None)  # flat vector observations only
        config = asdict(self.actor.config)
        config.pop("obs_dim")
        config.pop("action_dim")
        data.update(
            lr_schedule=self._dummy_schedule,
            actor_config=config,
            num_steps=steps_to_plain(self.grid),  # K, or the knots (plain floats)
            initial_std=self.initial_std,
            value_hidden=self.value_hidden,
            value_act=self.value_act,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
            compile=self.compile_mode or False,
        )
        return data

    # ------------------------------------------------------------------ compilation

    def set_compile(self, compile: bool | str) -> None:  # noqa: A002
        """Switch ``torch.compile`` of :attr:`compiled_methods` on (True or a mode) or off.

        Raises:
            ValueError: For a value that is not a bool or a ``torch.compile`` mode.
        """
        mode = check_compile(compile)
        if mode is not None and not self.compiled_methods:
            warnings.warn(
                f"{type(self).__name__} has no compiled paths: compile={compile!r} is ignored "
                "and it runs eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            mode = None
        self.compile_mode = mode
        self._compiled = CompiledPaths(mode)

    def _fast(self, name: str, *args: Any) -> Any:
        """``self.<name>(*args)``, through ``torch.compile`` when ``compile`` is on."""
        return self._compiled(self, name, *args)

    # ------------------------------------------------------------------ shared pieces

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the networks (float32 unless the policy was cast)."""
        return self.actor.velocity_net.output.weight.dtype

    def _cast(self, obs: Tensor) -> Tensor:
        """Observations in the networks' dtype (SB3 hands over float32 or float64 arrays)."""
        return obs.to(self.dtype)

    def _obs_n(self, obs: Tensor) -> Tensor:
        """Raw observations (B, Do) → the networks' input: cast, checked, normalized."""
        return self.actor.normalize_obs(self._cast(obs))

    def _noise(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """A standard normal draw of shape (B, Da), in the networks' dtype."""
        shape = (obs.shape[0], self.actor.config.action_dim)
        return torch.randn(shape, generator=generator, device=obs.device, dtype=self.dtype)

    def _initial_state(self, obs: Tensor, generator: torch.Generator | None) -> Tensor:
        """Chain start a⁰ ~ N(0, c²I), c = ``initial_std``, shape (B, Da)."""
        return self.initial_std * self._noise(obs, generator)

    def _initial_log_prob(self, a0: Tensor) -> Tensor:
        """Log-density of a⁰ under N(0, c²I), shape (B,) float64; 0 for the fixed start c = 0."""
        if self.initial_std == 0:
            return torch.zeros(a0.shape[0], device=a0.device, dtype=torch.float64)
        return gaussian_log_prob(a0, torch.zeros_like(a0), torch.full_like(a0, self.initial_std))

    def predict_values(self, obs: Tensor) -> Tensor:
        """State values V(o), shape (B, 1) (SB3's convention)."""
        return self.value_net(self._obs_n(obs))

    def ode_endpoint(self, obs: Tensor, a0: Tensor) -> Tensor:
        """The noiseless K-step Euler map φ₁(a⁰; o) on THE grid, shape (B, Da).

        Args:
            obs: Raw observations, shape (B, Do).
            a0: Chain starts, shape (B, Da).
        """
        return self._endpoint(self._obs_n(obs), a0)

    def _endpoint(self, obs_n: Tensor, a0: Tensor) -> Tensor:
        """:meth:`ode_endpoint` for already normalized observations (B, Do)."""
        return integrate(self.actor.velocity_fn(obs_n, self.grid), a0, self.grid)

    def bc_regularizer(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Squared W2 proxy to the frozen pretrained flow, shape (B,).

        Both flows integrate the same chain start deterministically over K steps; the squared
        distance of their endpoints (summed over dims) upper-bounds W2² of the two ODE maps'
        action distributions, since the shared start is one coupling. The start is drawn as
        rollouts draw it, a⁰ ~ N(0, c²I) with c = ``initial_std`` (:meth:`_initial_state`;
        PolicyFlow's latent z is that same draw), so the term constrains the map that is
        deployed: with c = 0 it is the squared distance of the two deterministic actions
        from a⁰ = 0 (the draw is still made, so other random streams do not shift with c).

        Args:
            obs: Raw observations, shape (B, Do).
            generator: RNG for a⁰ (the global one if None).
        """
        obs_n = self._obs_n(obs)
        a0 = self._initial_state(obs, generator)
        ours = self._endpoint(obs_n, a0)
        with torch.no_grad():
            ref_obs_n = self.reference.normalize_obs(self._cast(obs))
            ref = integrate(self.reference.velocity_fn(ref_obs_n, self.grid), a0, self.grid)
        return (ours - ref).square().sum(dim=-1)

    def to_env_action(self, a_k: Tensor) -> Tensor:
        """Map normalized final states a^K (B, Da) to env actions, clipped into the box."""
        return self.actor.action_normalizer.unnormalize(a_k, clip=True)

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for the trained parts; the reference flow always stays in eval."""
        super().set_training_mode(mode)
        self.reference.eval()
