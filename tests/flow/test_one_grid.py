"""THE time grid: every sampler, likelihood and integrator must take it from time_grid.

The test swaps ``time_grid`` for a warped (non-uniform) grid in every flowrl module that
imported it, then checks that each consumer (a) called it and (b) still agrees with the
others. A consumer that built its own grid would keep using the uniform one and fail.
New samplers and likelihoods (policies, learners) get a test here.
"""

import sys

import pytest
import torch

import flowrl.algos  # noqa: F401  (import every layer so their modules are patched too)
from flowrl.data.normalizers import Normalizer
from flowrl.flow import integrators as I
from flowrl.flow import times
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

ORIGINAL = times.time_grid


@pytest.fixture
def warped_grid(monkeypatch):
    calls = []

    def warped(num_steps, *, device=None, dtype=torch.float32):
        calls.append(num_steps)
        edges = (torch.arange(num_steps + 1, device=device, dtype=dtype) / num_steps) ** 2
        return edges[:-1], edges[1:] - edges[:-1]

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("flowrl") and getattr(module, "time_grid", None) is ORIGINAL:
            monkeypatch.setattr(module, "time_grid", warped)
            patched += 1
    assert patched >= 2  # flowrl.flow.times and flowrl.flow.integrators at least
    return calls


def _velocity(t, x):
    return torch.sin(4 * t)[:, None] + 0.5 * x


def _std(t, x):
    return 0.1 + 0.1 * t[:, None] + 0 * x


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_sampler_and_likelihood_follow_the_one_grid(warped_grid, K):
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    out = I.sample_noisy_chain(_velocity, _std, x0, K, generator=torch.Generator().manual_seed(1))
    replay = I.noisy_chain_log_prob(_velocity, _std, out.chain)
    torch.testing.assert_close(replay, out.log_prob, rtol=0, atol=1e-5)
    assert warped_grid == [K, K]


@pytest.mark.parametrize("K", [1, 3, 8])
def test_integrate_uses_the_one_grid(warped_grid, K):
    # Euler on dx/dt = f(t) sums f(t_k)·Δt_k over whatever grid time_grid returns.
    x0 = torch.zeros(5, 1)
    x1 = I.integrate(lambda t, x: torch.cos(3 * t)[:, None].expand_as(x), x0, K, "euler")
    t, dt = warped_grid_values(K)
    torch.testing.assert_close(x1, torch.full((5, 1), float((torch.cos(3 * t) * dt).sum())))
    assert warped_grid == [K]


def warped_grid_values(K):
    edges = (torch.arange(K + 1, dtype=torch.float32) / K) ** 2
    return edges[:-1], edges[1:] - edges[:-1]


def test_flow_actor_sampling_uses_the_one_grid(warped_grid):
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1, num_steps=4),
        Normalizer.identity(3),
        Normalizer.identity(2),
    )
    actor.sample(torch.zeros(7, 3))
    assert warped_grid == [4]


@pytest.mark.parametrize("K", [1, 3, 8])
def test_fused_likelihood_follows_the_one_grid(warped_grid, K):
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(2))
    out = I.sample_noisy_chain(_velocity, _std, x0, K, generator=torch.Generator().manual_seed(3))
    fused = I.noisy_chain_log_prob(_velocity, _std, out.chain, fused=True)
    torch.testing.assert_close(fused, out.log_prob, rtol=0, atol=1e-5)
    assert warped_grid == [K, K]
