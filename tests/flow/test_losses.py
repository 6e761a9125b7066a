import pytest
import torch

from flowrl.flow.losses import flow_matching_loss, reduce_batch, shortcut_loss
from flowrl.flow.paths import expand_time

B, D = 64, 3


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, D, generator=g),
        torch.randn(B, D, generator=g),
        torch.rand(B, generator=g),
    )


def test_flow_matching_is_zero_for_the_oracle_field():
    # For a known endpoint x1, v(t, x) = (x1 − x)/(1 − t) is exactly x1 − ε on the path.
    data, noise, t = _batch()
    t = t * 0.99
    loss = flow_matching_loss(lambda tt, x: (data - x) / (1 - expand_time(tt, x)), data, t, noise)
    assert loss.item() < 1e-10


def test_flow_matching_value_and_reductions():
    data, noise, t = _batch(1)
    # With v ≡ 0 each sample's loss is mean_d (x1 − ε)_d².
    expected = (data - noise).square().mean(dim=1)
    zero = lambda tt, x: torch.zeros_like(x)  # noqa: E731
    torch.testing.assert_close(flow_matching_loss(zero, data, t, noise, "none"), expected)
    torch.testing.assert_close(flow_matching_loss(zero, data, t, noise, "mean"), expected.mean())
    torch.testing.assert_close(flow_matching_loss(zero, data, t, noise, "sum"), expected.sum())
    with pytest.raises(ValueError, match="reduction"):
        reduce_batch(expected, "max")


def test_flow_matching_shape_mismatch():
    data, noise, t = _batch()
    with pytest.raises(ValueError, match="differ"):
        flow_matching_loss(lambda tt, x: x[:, :2], data, t, noise)


def test_shortcut_loss_is_zero_for_a_straight_field_and_conditioning_follows_rows():
    # Each row's conditioning is its own endpoint x1; the straight-line field toward it is
    # self-consistent at every step size, so the loss vanishes iff the loss hands every
    # call the conditioning rows that belong to its x rows.
    data, noise, _ = _batch(2)

    def velocity(t, x, d, cond):
        return (cond - x) / (1 - expand_time(t, x)).clamp_min(1e-6)

    out = shortcut_loss(
        velocity,
        data,
        noise,
        data,
        bootstrap_fraction=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.loss.item() < 1e-8
    assert out.self_consistency.item() < 1e-8


def test_shortcut_rows_steps_and_times():
    data, noise, _ = _batch(3)
    seen = []

    def velocity(t, x, d, cond):
        seen.append((t.clone(), d.clone()))
        return torch.zeros_like(x)

    M = 16
    out = shortcut_loss(
        velocity,
        data,
        noise,
        bootstrap_fraction=0.25,
        max_steps=M,
        generator=torch.Generator().manual_seed(1),
    )
    # Two no-grad half-step calls on the bootstrap rows, then one call on the whole batch.
    (t1, d1), (t2, d2), (t_all, d_all) = seen
    n_boot = B // 4
    assert len(t1) == len(t2) == n_boot and len(t_all) == B
    big = d_all[B - n_boot :]
    torch.testing.assert_close(d1, big / 2)
    torch.testing.assert_close(t2, t1 + big / 2)
    # Big steps are powers of two from 1 down to 2/M; bootstrap times are multiples of them.
    log2 = torch.log2(big)
    assert torch.equal(log2, log2.round()) and big.max() <= 1 and big.min() >= 2 / M
    ratio = t1 / big
    assert torch.allclose(ratio, ratio.round()) and torch.all(t1 + big <= 1)
    # Flow-matching rows use the finest step.
    assert torch.all(d_all[: B - n_boot] == 1 / M)
    assert out.loss.item() > 0


@pytest.mark.parametrize(
    "kwargs", [{"max_steps": 12}, {"max_steps": 1}, {"bootstrap_fraction": 1.0}]
)
def test_shortcut_validates(kwargs):
    data, noise, _ = _batch()
    with pytest.raises(ValueError):
        shortcut_loss(lambda t, x, d, c: x, data, noise, **kwargs)
