"""The functional core of flowrl's MJX tasks: a state pytree and a task base class.

A task is a pair of pure functions, ``reset(rng) -> MJXState`` and
``step(state, action) -> MJXState``, for one environment. Both can be ``jax.jit``-ed and
``jax.vmap``-ed; :class:`flowrl.envs.mjx.bridge.MJXVecEnv` does both and adds auto-reset,
time limits and the PyTorch / SB3 faces.

The locomotion ports in :mod:`flowrl.envs.mjx.locomotion` load the MJCF files that gymnasium
ships and reproduce the ``-v5`` tasks' observation layout, reward terms, termination rules,
frame skip and reset noise; tests pin them against gymnasium step by step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import mjx

__all__ = ["MJXState", "MJXTask", "gymnasium_asset"]


@dataclasses.dataclass(frozen=True)
class MJXState:
    """The state of one environment (or, under ``vmap``, of a batch of E of them).

    Attributes:
        data: The simulator state: an ``mjx.Data`` for flowrl's ports, the whole Playground
            ``State`` for an adapted Playground task.
        obs: Observation after the last step or reset, float32 (Do,).
        reward: Reward of the last step, float32 () (0 after a reset).
        terminated: Whether the last step ended the episode in a terminal state, bool ().
            Time limits are not terminations; the bridge adds them as truncations.
        metrics: Per-term reward components and diagnostics of the last step, each float32 ()
            (for the ports: the same names as gymnasium's ``info`` keys).
    """

    data: Any
    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    metrics: dict[str, jax.Array]


jax.tree_util.register_dataclass(
    MJXState,
    data_fields=["data", "obs", "reward", "terminated", "metrics"],
    meta_fields=[],
)


def gymnasium_asset(xml_file: str) -> str:
    """Path of an MJCF file that gymnasium ships (``gymnasium/envs/mujoco/assets/``)."""
    import gymnasium.envs.mujoco as gym_mujoco

    path = os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", xml_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"gymnasium ships no MJCF file {xml_file!r} (looked at {path})")
    return path


def cfrc_ext(data: mjx.Data) -> jax.Array:
    """External contact wrench per body (nbody, 6), as after ``mj_rnePostConstraint``.

    MJX 3.17 keeps it on the JAX implementation's ``_impl`` and deprecates the attribute on
    ``Data``; older MJX releases only have the attribute.
    """
    impl = getattr(data, "_impl", None)
    if impl is not None and hasattr(impl, "cfrc_ext"):
        return impl.cfrc_ext
    return data.cfrc_ext


_CONES = {"pyramidal": mujoco.mjtCone.mjCONE_PYRAMIDAL, "elliptic": mujoco.mjtCone.mjCONE_ELLIPTIC}


class MJXTask:
    """One MuJoCo task as pure JAX functions (subclasses fill in the task's rules).

    Subclasses set the class attributes and implement :meth:`observation`,
    :meth:`_reward_and_termination` and :meth:`_reset_noise`.

    Args:
        cone: Override the MJCF's friction cone (``"pyramidal"`` or ``"elliptic"``) in the
            model this task simulates, e.g. to compare with a classic MuJoCo model changed the
            same way. ``None`` keeps the file's setting (what the gymnasium task uses).
        reset_noise_scale: Override the task's reset noise (gymnasium's argument of that name).
    """

    xml_file: ClassVar[str]
    """MJCF file name in gymnasium's assets."""
    gym_id: ClassVar[str]
    """The gymnasium task this port reproduces (e.g. ``"Hopper-v5"``)."""
    frame_skip: ClassVar[int]
    default_reset_noise_scale: ClassVar[float]
    metric_names: ClassVar[tuple[str, ...]]
    max_episode_steps: ClassVar[int] = 1000
    render_mode: ClassVar[str | None] = None  # SB3's VecEnv asks; MJX tasks do not render
    needs_contact_forces: ClassVar[bool] = False
    """Whether :meth:`step` must run ``rne_postconstraint`` (tasks that read ``cfrc_ext``)."""

    def __init__(self, *, cone: str | None = None, reset_noise_scale: float | None = None):
        self.mj_model = mujoco.MjModel.from_xml_path(gymnasium_asset(self.xml_file))
        if cone is not None:
            if cone not in _CONES:
                raise ValueError(f"cone must be one of {sorted(_CONES)}, got {cone!r}")
            self.mj_model.opt.cone = _CONES[cone]
        self.reset_noise_scale = (
            self.default_reset_noise_scale if reset_noise_scale is None else reset_noise_scale
        )
        # The JAX implementation, explicitly: it is the one that runs on every device.
        self.model = mjx.put_model(self.mj_model, impl="jax")
        self._template = mjx.make_data(self.model, impl="jax")
        self.init_qpos = jnp.asarray(self.mj_model.qpos0, jnp.float32)
        self.init_qvel = jnp.zeros(self.mj_model.nv, jnp.float32)
        self.dt = float(self.mj_model.opt.timestep) * self.frame_skip
        ctrl = np.asarray(self.mj_model.actuator_ctrlrange, np.float32)
        self.action_low, self.action_high = ctrl[:, 0].copy(), ctrl[:, 1].copy()
        self.action_size = int(self.mj_model.nu)
        self.observation_size = int(self.observation(self._template).shape[0])

    # ---------------------------------------------------------------- the task's rules

    def observation(self, data: mjx.Data) -> jax.Array:
        """Observation of a simulator state, float32 (Do,)."""
        raise NotImplementedError

    def _reward_and_termination(
        self, before: mjx.Data, after: mjx.Data, action: jax.Array
    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """(reward (), terminated bool (), metrics) of one step from ``before`` to ``after``."""
        raise NotImplementedError

    def _reset_noise(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Initial (qpos (nq,), qvel (nv,)) drawn around the model's reference state."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the functional API

    def state_from(self, qpos: jax.Array, qvel: jax.Array) -> MJXState:
        """The state a reset to (qpos, qvel) gives, as gymnasium's ``set_state`` does.

        Like gymnasium (``mj_resetData`` then ``mj_forward``), everything but qpos/qvel starts
        from the model's defaults, and the derived quantities are recomputed.
        """
        qpos = jnp.asarray(qpos, jnp.float32)
        data = self._template.replace(qpos=qpos, qvel=jnp.asarray(qvel, jnp.float32))
        data = mjx.forward(self.model, data)
        # MJX's forward writes normalized free-joint quaternions back into qpos (its
        # kinematics assume unit quaternions); MuJoCo normalizes them only internally and
        # leaves qpos as set until the next integration, which normalizes both alike. So the
        # state keeps MJX's qpos and the reset observation shows the raw one, as gymnasium's.
        obs = self.observation(data.replace(qpos=qpos))
        zero = jnp.zeros((), jnp.float32)
        return MJXState(
            data=data,
            obs=obs,
            reward=zero,
            terminated=jnp.zeros((), bool),
            metrics={name: zero for name in self.metric_names},
        )

    def reset(self, rng: jax.Array) -> MJXState:
        """A fresh episode's state, with the task's reset noise drawn from ``rng``."""
        qpos, qvel = self._reset_noise(rng)
        return self.state_from(qpos, qvel)

    def step(self, state: MJXState, action: jax.Array) -> MJXState:
        """One env step: ``frame_skip`` physics steps with ``ctrl = action``.

        The action goes to the actuators unclipped, as in gymnasium (MuJoCo clamps it to the
        actuator's ctrlrange); the control cost uses the unclipped action too.
        """
        action = jnp.asarray(action, jnp.float32)
        before = state.data
        data = before.replace(ctrl=action)
        data = jax.lax.fori_loop(0, self.frame_skip, lambda _, d: mjx.step(self.model, d), data)
        if self.needs_contact_forces:
            # gymnasium calls mj_rnePostConstraint after the physics steps (cfrc_ext).
            data = mjx.rne_postconstraint(self.model, data)
        reward, terminated, metrics = self._reward_and_termination(before, data, action)
        return MJXState(
            data=data,
            obs=self.observation(data),
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            metrics={k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()},
        )

    def __repr__(self) -> str:
        name, size = type(self).__name__, (self.observation_size, self.action_size)
        return f"{name}(like {self.gym_id}, Do={size[0]}, Da={size[1]})"


def uniform_noise(rng: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
    """U(−scale, scale) of the given shape, float32."""
    return jax.random.uniform(rng, shape, jnp.float32, -scale, scale)
