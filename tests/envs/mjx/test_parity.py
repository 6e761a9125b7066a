"""MJX ports against gymnasium's ``-v5`` tasks, step for step on the same actions.

From gymnasium's own reset state (qpos, qvel) and the same 60 random actions, the MJX port's
observations, rewards, per-term rewards and termination flags must agree with gymnasium's.

Tolerance. MJX simulates in float32, gymnasium's MuJoCo in float64; each env step runs
2-5 RK4 or Euler substeps with a Newton constraint solve, and every impact amplifies the
rounding difference. Measured maxima over 60 free-running steps (velocities up to ~17):
observations 1.3e-5 (Hopper), 2.4e-4 (Walker2d), 9e-6 (InvertedPendulum) with actions over
the full actuator range, 8e-4 (HalfCheetah) over half of it; rewards ≤ 1.2e-5. The bound,
atol 5e-3 + rtol 1e-3, leaves ≥ 5x margin; a port error (a wrong term, index, frame skip or
noise) is orders larger.

Why half the range for HalfCheetah: with full-range random torques it flips and bounces, each impact
multiplies the float32/float64 difference by ~10, and the two trajectories part after ~25
steps (measured 6e-2 at step 25, 4 at step 59, elliptic cones alike): chaos, not the port.
The Ant, whose contacts switch on within a 2 cm margin, parts even sooner (a contact present
in one simulator a step before the other), so it is compared teacher-forced: each step
starts both simulators from gymnasium's full state (``mjx.put_data``).
"""

from __future__ import annotations

import gymnasium as gym
import jax.numpy as jnp
import numpy as np
import pytest
from mujoco import mjx

from flowrl.envs.mjx.core import MJXState

ATOL, RTOL = 5e-3, 1e-3
STEPS = 60
# Fraction of the actuator range the random actions span (see the module docstring).
ACTION_SCALE = {"HalfCheetah": 0.5, "Ant": 0.5}


def run_pair(compiled, name, *, steps=STEPS, cone=None, teacher_forced=False, seed=0):
    """Step gymnasium and the MJX port side by side; returns (task, per-step records)."""
    task, state_from, step = compiled(name, cone)
    env = gym.make(task.gym_id).unwrapped
    env.model.opt.cone = task.mj_model.opt.cone  # the same cone on both sides
    gym_obs, _ = env.reset(seed=seed)
    state = state_from(jnp.asarray(env.data.qpos), jnp.asarray(env.data.qvel))
    np.testing.assert_allclose(np.asarray(state.obs), gym_obs, atol=1e-6, err_msg="reset obs")
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(steps):
        action = rng.uniform(task.action_low, task.action_high) * ACTION_SCALE.get(name, 1.0)
        action = action.astype(np.float32)
        if teacher_forced:
            state = MJXState(
                data=mjx.put_data(task.mj_model, env.data, impl="jax"),
                obs=state.obs,
                reward=state.reward,
                terminated=state.terminated,
                metrics=state.metrics,
            )
        gym_obs, gym_reward, gym_term, _, gym_info = env.step(action)
        state = step(state, jnp.asarray(action))
        records.append((gym_obs, gym_reward, gym_term, gym_info, state))
    return task, records


def assert_parity(task, records) -> None:
    for t, (gym_obs, gym_reward, gym_term, gym_info, state) in enumerate(records):
        close = dict(atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(
            np.asarray(state.obs), gym_obs, **close, err_msg=f"obs, step {t}"
        )
        np.testing.assert_allclose(float(state.reward), gym_reward, **close, err_msg=f"reward {t}")
        assert bool(state.terminated) == gym_term, f"terminated at step {t}"
        for key in task.metric_names:
            np.testing.assert_allclose(
                float(state.metrics[key]), gym_info[key], **close, err_msg=f"{key} at step {t}"
            )


@pytest.mark.parametrize("name", ["Hopper", "Walker2d", "HalfCheetah", "InvertedPendulum"])
def test_port_matches_gymnasium(compiled, name):
    task, records = run_pair(compiled, name)
    assert_parity(task, records)
    if name != "HalfCheetah":  # the comparison covered a termination as well
        assert any(r[2] for r in records), "no termination within the compared steps"


def test_ant_matches_gymnasium_with_elliptic_cones(compiled):
    # The port, with both simulators switched to elliptic friction cones (see below).
    task, records = run_pair(compiled, "Ant", cone="elliptic", teacher_forced=True)
    assert_parity(task, records)
    contact = [r for r in records if np.abs(r[0][-78:]).max() > 0.1]
    assert len(contact) > 5, "too few steps with contact forces were compared"


def test_ant_free_run_agrees_before_contacts_part(compiled):
    _, records = run_pair(compiled, "Ant", cone="elliptic", steps=10)
    assert_parity(compiled("Ant", "elliptic")[0], records)


@pytest.mark.xfail(
    strict=True,
    reason="MJX 3.17 builds capsule-plane contact frames from the plane's axes, MuJoCo from "
    "the capsule's; with Ant's pyramidal friction cone that changes the friction forces",
)
def test_ant_pyramidal_contacts_match_gymnasium(compiled):
    # The unmodified Ant-v5 file: the known MJX difference, pinned so a fix upstream shows.
    task, records = run_pair(compiled, "Ant", teacher_forced=True)
    assert_parity(task, records)
