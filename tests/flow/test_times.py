import pytest
import torch

from flowrl.flow.times import BetaTime, LogitNormalTime, UniformTime, make_time_sampler, time_grid


@pytest.mark.parametrize("K", [1, 2, 3, 4, 8, 128])
def test_grid_tiles_unit_interval(K):
    t, dt = time_grid(K, dtype=torch.float64)
    assert t.shape == dt.shape == (K,)
    assert t[0] == 0.0
    # Consecutive steps meet exactly and the last one ends at t = 1 (data).
    torch.testing.assert_close(t[1:], (t + dt)[:-1], rtol=0, atol=1e-15)
    torch.testing.assert_close((t + dt)[-1], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(dt.sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_grid_rejects_bad_step_counts(bad):
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(bad)


@pytest.mark.parametrize(
    "sampler", [UniformTime(), LogitNormalTime(), BetaTime(1.0, 1.5), BetaTime(2.0, 2.0, 0.9)]
)
def test_samplers_in_range_and_reproducible(sampler):
    a = sampler(4096, generator=torch.Generator().manual_seed(3))
    b = sampler(4096, generator=torch.Generator().manual_seed(3))
    assert a.shape == (4096,)
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_sampler_moments():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    # Beta(a, b) has mean a / (a + b); a uniform on [0.2, 0.6] has mean 0.4.
    assert abs(BetaTime(1.0, 1.5)(n, generator=g).mean().item() - 0.4) < 5e-3
    assert abs(UniformTime(0.2, 0.6)(n, generator=g).mean().item() - 0.4) < 5e-3
    # sigmoid(m + s·ξ) has median sigmoid(m).
    t = LogitNormalTime(mean=1.0, std=0.5)(n, generator=g)
    assert abs(t.median().item() - torch.sigmoid(torch.tensor(1.0)).item()) < 5e-3


def test_beta_with_generator_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    BetaTime()(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(3), expected)


def test_make_time_sampler():
    assert make_time_sampler("logit_normal", mean=0.5) == LogitNormalTime(mean=0.5)
    with pytest.raises(ValueError, match="unknown time sampler"):
        make_time_sampler("cosine")
    with pytest.raises(ValueError, match="bad arguments"):
        make_time_sampler("beta", gamma=1.0)
    with pytest.raises(ValueError):
        UniformTime(0.5, 0.2)
