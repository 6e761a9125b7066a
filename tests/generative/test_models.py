"""DiT and MLP generators: shapes, patches, conditioning, and torch.func.jvp through them."""

import pytest
import torch

from flowrl.generative.models import DiT, DiTConfig, MLPGenerator, patchify, unpatchify


def small_dit(shape=(1, 8, 8), patch=(2, 2), num_classes=10, **kw):
    return DiT(
        DiTConfig(
            sample_shape=shape,
            patch=patch,
            width=32,
            depth=2,
            heads=2,
            num_classes=num_classes,
            **kw,
        )
    )


@pytest.mark.parametrize(
    "shape,patch", [((3, 8, 12), (2, 4)), ((2, 4, 8, 8), (2, 4, 2)), ((1, 6, 6), (3, 3))]
)
def test_patchify_round_trip(shape, patch):
    x = torch.randn(2, *shape)
    tokens = patchify(x, patch)
    grid = [s // p for s, p in zip(shape[1:], patch, strict=True)]
    assert tokens.shape == (2, torch.Size(grid).numel(), shape[0] * torch.Size(patch).numel())
    assert torch.equal(unpatchify(tokens, shape[0], shape[1:], patch), x)
    # A token holds exactly one patch's pixels.
    if len(shape) == 3:
        assert torch.equal(tokens[0, 0], x[0, :, : patch[0], : patch[1]].reshape(-1))


def test_dit_shapes_zero_init_and_classes():
    torch.manual_seed(0)
    for shape, patch in (((1, 8, 8), (2, 2)), ((1, 4, 8, 8), (2, 4, 4))):
        net = small_dit(shape, patch, num_classes=4)
        x, t = torch.randn(3, *shape), torch.rand(3)
        out = net(x, t, torch.tensor([0, 1, 2]))
        assert out.shape == x.shape
        assert out.abs().max() == 0  # adaLN-zero and a zero output layer: starts at 0
    # After perturbing the output layer, labels change the output and None is the null class.
    torch.nn.init.normal_(net.output.weight)
    for block in net.blocks:
        torch.nn.init.normal_(block.modulation[1].weight, std=0.02)
    out_a = net(x, t, torch.tensor([0, 0, 0]))
    out_b = net(x, t, torch.tensor([1, 1, 1]))
    assert not torch.allclose(out_a, out_b)
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((3,), net.null_class)))


def test_dit_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(sample_shape=(1, 7, 8), patch=(2, 2))
    with pytest.raises(ValueError, match="one patch size per"):
        DiTConfig(sample_shape=(1, 8, 8), patch=(2, 2, 2))
    net = small_dit(num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 1, 4, 4), torch.rand(2))


@pytest.mark.parametrize("shape,patch", [((1, 8, 8), (2, 2)), ((1, 4, 4, 4), (2, 2, 2))])
def test_func_jvp_through_dit_matches_finite_differences(float64, shape, patch):
    """JVP in x, t and every weight at once, against a central difference."""
    torch.manual_seed(0)
    net = small_dit(shape, patch, num_classes=3, learned_positions=True)
    for p in net.parameters():  # leave the zero init: every path must carry signal
        torch.nn.init.normal_(p, std=0.2)
    params = dict(net.named_parameters())
    x, t, y = torch.randn(2, *shape), torch.rand(2), torch.tensor([0, 2])
    tx, tt = torch.randn_like(x), torch.randn_like(t)
    tp = {k: torch.randn_like(v) for k, v in params.items()}

    def f(xx, ttime, pp):
        return torch.func.functional_call(net, pp, (xx, ttime, y))

    out, out_dot = torch.func.jvp(f, (x, t, params), (tx, tt, tp))
    eps = 1e-6
    plus = f(x + eps * tx, t + eps * tt, {k: v + eps * tp[k] for k, v in params.items()})
    minus = f(x - eps * tx, t - eps * tt, {k: v - eps * tp[k] for k, v in params.items()})
    fd = (plus - minus) / (2 * eps)
    torch.testing.assert_close(out, f(x, t, params))
    torch.testing.assert_close(out_dot, fd, rtol=1e-6, atol=1e-7)


def test_mlp_generator_signature():
    net = MLPGenerator(2, width=16, depth=1, num_classes=3)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert net(x, t, torch.arange(5) % 3).shape == (5, 2)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((5,), 3)))
    with pytest.raises(ValueError, match="unconditional"):
        MLPGenerator(2)(x, t, torch.zeros(5, dtype=torch.long))
