"""MJX ports of gymnasium's MuJoCo ``-v5`` locomotion tasks (default arguments).

Each class mirrors the gymnasium file of the same name: the same MJCF, frame skip, reset
noise, observation layout, reward terms and termination rule; the per-term rewards are
reported under gymnasium's ``info`` keys. Where gymnasium reads a quantity after
``mj_step`` (e.g. a body's ``xpos``, which MuJoCo computes before the last integration),
MJX's ``step`` has the same semantics, so the ports read the same fields.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from mujoco import mjx

from .core import MJXTask, cfrc_ext, uniform_noise

__all__ = ["Ant", "HalfCheetah", "Hopper", "InvertedPendulum", "Walker2d"]


def _within(x: jax.Array, low: float, high: float) -> jax.Array:
    """Elementwise low < x < high (gymnasium's open-interval health checks)."""
    return (low < x) & (x < high)


class _PlanarWalker(MJXTask):
    """Shared rules of Hopper-v5 and Walker2d-v5 (planar, x-velocity reward, fall = end)."""

    frame_skip = 4
    default_reset_noise_scale = 5e-3
    forward_reward_weight = 1.0
    ctrl_cost_weight = 1e-3
    healthy_reward = 1.0
    healthy_z_range: tuple[float, float]
    healthy_angle_range: tuple[float, float]
    metric_names = (
        "reward_forward",
        "reward_ctrl",
        "reward_survive",
        "x_position",
        "x_velocity",
        "z_distance_from_origin",
    )

    def observation(self, data: mjx.Data) -> jax.Array:  # noqa: D102
        # qpos without the x position, velocities clipped to ±10 (as gymnasium).
        return jnp.concatenate([data.qpos[1:], jnp.clip(data.qvel, -10.0, 10.0)])

    def is_healthy(self, data: mjx.Data) -> jax.Array:
        """Whether the walker is upright: z and torso angle within the healthy ranges."""
        z, angle = data.qpos[1], data.qpos[2]
        return _within(z, *self.healthy_z_range) & _within(angle, *self.healthy_angle_range)

    def _reward_and_termination(self, before, after, action):
        x_velocity = (after.qpos[0] - before.qpos[0]) / self.dt
        healthy = self.is_healthy(after)
        forward = self.forward_reward_weight * x_velocity
        survive = self.healthy_reward * healthy
        ctrl_cost = self.ctrl_cost_weight * jnp.sum(jnp.square(action))
        metrics = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl_cost,
            "reward_survive": survive,
            "x_position": after.qpos[0],
            "x_velocity": x_velocity,
            "z_distance_from_origin": after.qpos[1] - self.init_qpos[1],
        }
        return forward + survive - ctrl_cost, ~healthy, metrics

    def _reset_noise(self, rng):
        k_pos, k_vel = jax.random.split(rng)
        s = self.reset_noise_scale
        return (
            self.init_qpos + uniform_noise(k_pos, self.init_qpos.shape, s),
            self.init_qvel + uniform_noise(k_vel, self.init_qvel.shape, s),
        )


class Hopper(_PlanarWalker):
    """Hopper-v5: Do = 11, Da = 3."""

    xml_file = "hopper.xml"
    gym_id = "Hopper-v5"
    healthy_z_range = (0.7, float("inf"))
    healthy_angle_range = (-0.2, 0.2)
    healthy_state_range = (-100.0, 100.0)

    def is_healthy(self, data):  # noqa: D102
        # Hopper also bounds every state entry after (x, z): qpos[2:] and qvel.
        state = jnp.concatenate([data.qpos, data.qvel])[2:]
        healthy_state = jnp.all(_within(state, *self.healthy_state_range))
        return healthy_state & super().is_healthy(data)


class Walker2d(_PlanarWalker):
    """Walker2d-v5: Do = 17, Da = 6."""

    xml_file = "walker2d_v5.xml"
    gym_id = "Walker2d-v5"
    healthy_z_range = (0.8, 2.0)
    healthy_angle_range = (-1.0, 1.0)


class HalfCheetah(MJXTask):
    """HalfCheetah-v5: Do = 17, Da = 6; never terminates."""

    xml_file = "half_cheetah.xml"
    gym_id = "HalfCheetah-v5"
    frame_skip = 5
    default_reset_noise_scale = 0.1
    forward_reward_weight = 1.0
    ctrl_cost_weight = 0.1
    metric_names = ("reward_forward", "reward_ctrl", "x_position", "x_velocity")

    def observation(self, data):  # noqa: D102
        return jnp.concatenate([data.qpos[1:], data.qvel])

    def _reward_and_termination(self, before, after, action):
        x_velocity = (after.qpos[0] - before.qpos[0]) / self.dt
        forward = self.forward_reward_weight * x_velocity
        ctrl_cost = self.ctrl_cost_weight * jnp.sum(jnp.square(action))
        metrics = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl_cost,
            "x_position": after.qpos[0],
            "x_velocity": x_velocity,
        }
        return forward - ctrl_cost, jnp.zeros((), bool), metrics

    def _reset_noise(self, rng):
        k_pos, k_vel = jax.random.split(rng)
        s = self.reset_noise_scale
        return (
            self.init_qpos + uniform_noise(k_pos, self.init_qpos.shape, s),
            self.init_qvel + s * jax.random.normal(k_vel, self.init_qvel.shape, jnp.float32),
        )


class Ant(MJXTask):
    """Ant-v5: Do = 105 (qpos[2:], qvel, clipped cfrc_ext of bodies 1…), Da = 8.

    Note: with the MJCF's pyramidal friction cone, MJX and classic MuJoCo disagree once a
    leg touches the floor: MJX 3.17 builds the contact's tangent frame from the plane's axes,
    MuJoCo from the capsule's, and a pyramid (unlike an elliptic cone) is not invariant to
    that rotation. With ``cone="elliptic"`` on both sides they agree (see the parity tests).
    """

    xml_file = "ant.xml"
    gym_id = "Ant-v5"
    frame_skip = 5
    default_reset_noise_scale = 0.1
    needs_contact_forces = True
    forward_reward_weight = 1.0
    ctrl_cost_weight = 0.5
    contact_cost_weight = 5e-4
    healthy_reward = 1.0
    healthy_z_range = (0.2, 1.0)
    contact_force_range = (-1.0, 1.0)
    main_body = 1
    metric_names = (
        "reward_forward",
        "reward_ctrl",
        "reward_contact",
        "reward_survive",
        "x_position",
        "y_position",
        "distance_from_origin",
        "x_velocity",
        "y_velocity",
    )

    def contact_forces(self, data):  # noqa: D102
        return jnp.clip(cfrc_ext(data), *self.contact_force_range)

    def observation(self, data):  # noqa: D102
        return jnp.concatenate([data.qpos[2:], data.qvel, self.contact_forces(data)[1:].ravel()])

    def is_healthy(self, data):  # noqa: D102
        state = jnp.concatenate([data.qpos, data.qvel])
        low, high = self.healthy_z_range
        # Closed interval here, as in gymnasium's Ant.
        return jnp.all(jnp.isfinite(state)) & (low <= state[2]) & (state[2] <= high)

    def _reward_and_termination(self, before, after, action):
        xy_velocity = (after.xpos[self.main_body, :2] - before.xpos[self.main_body, :2]) / self.dt
        healthy = self.is_healthy(after)
        forward = self.forward_reward_weight * xy_velocity[0]
        survive = self.healthy_reward * healthy
        ctrl_cost = self.ctrl_cost_weight * jnp.sum(jnp.square(action))
        contact_cost = self.contact_cost_weight * jnp.sum(jnp.square(self.contact_forces(after)))
        metrics = {
            "reward_forward": forward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": survive,
            "x_position": after.qpos[0],
            "y_position": after.qpos[1],
            "distance_from_origin": jnp.linalg.norm(after.qpos[:2]),
            "x_velocity": xy_velocity[0],
            "y_velocity": xy_velocity[1],
        }
        return forward + survive - ctrl_cost - contact_cost, ~healthy, metrics

    _reset_noise = HalfCheetah._reset_noise


class InvertedPendulum(MJXTask):
    """InvertedPendulum-v5: Do = 4, Da = 1; reward 1 per step until the pole tips past 0.2."""

    xml_file = "inverted_pendulum.xml"
    gym_id = "InvertedPendulum-v5"
    frame_skip = 2
    default_reset_noise_scale = 0.01
    metric_names = ("reward_survive",)

    def observation(self, data):  # noqa: D102
        return jnp.concatenate([data.qpos, data.qvel])

    def _reward_and_termination(self, before, after, action):
        obs = self.observation(after)
        terminated = ~jnp.all(jnp.isfinite(obs)) | (jnp.abs(obs[1]) > 0.2)
        reward = 1.0 - terminated.astype(jnp.float32)
        return reward, terminated, {"reward_survive": reward}

    _reset_noise = _PlanarWalker._reset_noise
