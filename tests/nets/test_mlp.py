import pytest
import torch
from torch import nn

from flowrl.nets import MLP, ResidualBlock, VelocityMLP, activation, zero_init_
from flowrl.nets.mlp import Mish, mish


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise_output(net: VelocityMLP, seed: int = 0) -> None:
    torch.manual_seed(seed)
    nn.init.normal_(net.output.weight)
    nn.init.normal_(net.output.bias)


# ---------------------------------------------------------------------- activation, zero_init_


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("relu", nn.ReLU),
        ("gelu", nn.GELU),
        ("silu", nn.SiLU),
        ("mish", Mish),
        ("tanh", nn.Tanh),
        ("elu", nn.ELU),
    ],
)
def test_activation_by_name(name, cls):
    module = activation(name)
    assert type(module) is cls
    # A fresh instance every call.
    assert activation(name) is not module


@pytest.mark.parametrize("name", ["nope", "ReLU", ""])
def test_unknown_activation_raises(name):
    with pytest.raises(ValueError, match="unknown activation"):
        activation(name)


def test_zero_init_zeroes_weight_and_bias():
    layer = nn.Linear(4, 3)
    assert zero_init_(layer) is layer
    assert torch.count_nonzero(layer.weight).item() == 0
    assert torch.count_nonzero(layer.bias).item() == 0
    no_bias = zero_init_(nn.Linear(4, 3, bias=False))
    assert no_bias.bias is None
    assert torch.count_nonzero(no_bias.weight).item() == 0


# ---------------------------------------------------------------------- MLP


@pytest.mark.parametrize("hidden", [(), (16,), (8, 12)])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_mlp_shapes(hidden, layer_norm):
    net = MLP(5, 3, hidden=hidden, layer_norm=layer_norm)
    out = net(torch.randn(7, 5, generator=_gen()))
    assert out.shape == (7, 3)
    assert (net.in_dim, net.out_dim) == (5, 3)
    linears = [m for m in net.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip((5, *hidden), (*hidden, 3), strict=True)
    )
    n_norms = sum(isinstance(m, nn.LayerNorm) for m in net.net)
    assert n_norms == (len(hidden) if layer_norm else 0)


@pytest.mark.parametrize("hidden", [(), (16, 16)])
def test_mlp_zero_last_outputs_exact_zero(hidden):
    x = torch.randn(9, 4, generator=_gen()) * 10
    net = MLP(4, 2, hidden=hidden, zero_last=True)
    assert torch.equal(net(x), torch.zeros(9, 2))
    plain = MLP(4, 2, hidden=hidden, zero_last=False)
    assert plain(x).abs().sum().item() > 0


# ---------------------------------------------------------------------- ResidualBlock


def test_residual_block_is_identity_with_zero_second_layer():
    block = ResidualBlock(8, act="gelu", expansion=2)
    assert block.fc1.out_features == 16 and block.fc2.in_features == 16
    x = torch.randn(5, 8, generator=_gen())
    zero_init_(block.fc2)
    assert torch.equal(block(x), x)


# ---------------------------------------------------------------------- VelocityMLP


def _inputs(B: int = 6, x_dim: int = 3, cond_dim: int = 4, seed: int = 0):
    g = _gen(seed)
    return (
        torch.rand(B, generator=g),
        torch.randn(B, x_dim, generator=g),
        torch.randn(B, cond_dim, generator=g),
    )


@pytest.mark.parametrize("step_size_input", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_velocity_shape_and_zero_at_init(step_size_input, depth):
    net = VelocityMLP(3, cond_dim=4, width=32, depth=depth, step_size_input=step_size_input)
    t, x, cond = _inputs()
    d = torch.full((6,), 0.25) if step_size_input else None
    v = net(t, x, cond, d)
    assert v.shape == (6, 3)
    assert torch.equal(v, torch.zeros(6, 3))
    assert len(net.blocks) == depth
    expected_in = 3 + 4 + 32 * (2 if step_size_input else 1)
    assert net.input.in_features == expected_in

    # Perturb only the output weights (a constant shift would be cancelled by the LayerNorm,
    # whose outputs sum to zero over the features).
    with torch.no_grad():
        net.output.weight.add_(0.1 * torch.randn(net.output.weight.shape, generator=_gen(1)))
    v2 = net(t, x, cond, d)
    assert v2.shape == (6, 3)
    assert torch.equal(net.output.bias, torch.zeros(3))
    assert v2.abs().min().item() > 1e-4


def test_velocity_not_zero_without_zero_last():
    net = VelocityMLP(3, cond_dim=4, width=32, depth=1, zero_last=False)
    t, x, cond = _inputs()
    assert net(t, x, cond).abs().sum().item() > 0


def test_velocity_uses_condition_time_and_step_size():
    torch.manual_seed(0)
    net = VelocityMLP(3, cond_dim=4, width=32, depth=2, step_size_input=True)
    _randomise_output(net)
    t, x, cond = _inputs()
    d = torch.full((6,), 0.5)
    base = net(t, x, cond, d)
    # Same inputs, same output (deterministic).
    assert torch.equal(base, net(t, x, cond, d))
    for changed in (
        net(t, x, cond + 1.0, d),
        net((t + 0.3) % 1.0, x, cond, d),
        net(t, x, cond, torch.full((6,), 0.125)),
        net(t, x + 1.0, cond, d),
    ):
        diff = (changed - base).abs().amax(dim=1)
        assert diff.min().item() > 1e-4
    # Rows are independent: changing one row's cond changes only that row.
    cond2 = cond.clone()
    cond2[2] += 1.0
    out2 = net(t, x, cond2, d)
    rows = (out2 - base).abs().amax(dim=1) > 0
    assert rows.tolist() == [False, False, True, False, False, False]


def test_unconditional_without_cond():
    net = VelocityMLP(2, cond_dim=0, width=16, depth=1)
    _randomise_output(net)
    t, x, _ = _inputs(B=5, x_dim=2)
    v = net(t, x)
    assert v.shape == (5, 2)
    assert net.input.in_features == 2 + 32
    assert torch.isfinite(v).all()
    assert v.abs().sum().item() > 0


def test_wrong_x_width_raises():
    net = VelocityMLP(3, cond_dim=4, width=16, depth=1)
    t, _, cond = _inputs()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        net(t, torch.zeros(6, 2), cond)
    with pytest.raises(ValueError, match="x must have shape"):
        net(t, torch.zeros(6, 3, 1), cond)
    with pytest.raises(ValueError, match="x must have shape"):
        net(t, torch.zeros(3), cond)


@pytest.mark.parametrize("cond_shape", [None, (6, 3), (6, 5), (5, 4), (6, 4, 1), (24,)])
def test_missing_or_wrong_cond_raises(cond_shape):
    net = VelocityMLP(3, cond_dim=4, width=16, depth=1)
    t, x, _ = _inputs()
    cond = None if cond_shape is None else torch.zeros(cond_shape)
    with pytest.raises(ValueError, match=r"cond must have shape \(6, 4\)"):
        net(t, x, cond)


def test_step_size_required_iff_enabled():
    t, x, cond = _inputs()
    with_d = VelocityMLP(3, cond_dim=4, width=16, depth=1, step_size_input=True)
    with pytest.raises(ValueError, match="pass d"):
        with_d(t, x, cond)
    without_d = VelocityMLP(3, cond_dim=4, width=16, depth=1, step_size_input=False)
    with pytest.raises(ValueError, match="no step-size input"):
        without_d(t, x, cond, torch.full((6,), 0.5))


@pytest.mark.parametrize(("x_dim", "cond_dim"), [(0, 2), (-1, 0), (2, -1)])
def test_bad_dims_raise(x_dim, cond_dim):
    with pytest.raises(ValueError, match="x_dim"):
        VelocityMLP(x_dim, cond_dim=cond_dim)


@pytest.mark.parametrize("step_size_input", [False, True])
def test_gradients_reach_every_parameter(step_size_input):
    torch.manual_seed(0)
    net = VelocityMLP(3, cond_dim=4, width=16, depth=2, step_size_input=step_size_input)
    _randomise_output(net, seed=1)
    t, x, cond = _inputs()
    d = torch.full((6,), 0.25) if step_size_input else None
    net(t, x, cond, d).square().sum().backward()
    params = dict(net.named_parameters())
    # input, 2 blocks x (norm w,b + fc1 w,b + fc2 w,b), final norm w,b, output w,b
    assert len(params) == 2 + 2 * 6 + 2 + 2
    for name, p in params.items():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum().item() > 0, name


def test_zero_output_layer_blocks_gradient_to_hidden_layers():
    net = VelocityMLP(3, cond_dim=4, width=16, depth=1)
    t, x, cond = _inputs()
    net(t, x, cond).sum().backward()
    # Only the output layer learns on the first step of a zero-initialised net.
    assert net.output.weight.grad.abs().sum().item() > 0
    assert net.output.bias.grad.abs().sum().item() > 0
    assert net.input.weight.grad.abs().sum().item() == 0


# ---------------------------------------------------------------------- Mish


def _mish_inputs(n: int) -> torch.Tensor:
    x = 6 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    # Saturation on both sides, overflow territory of exp and exact zeros.
    x[:6] = torch.tensor([-200.0, -30.0, 0.0, 19.9, 25.0, 200.0])
    return x


@pytest.mark.parametrize("n", [64, 40_000])  # PyTorch's kernel and the formula
def test_mish_equals_torch_mish_and_its_gradient(n):
    x = _mish_inputs(n).requires_grad_()
    ours = mish(x)
    ours_grad = torch.autograd.grad(ours.sum(), x)[0]
    y = x.detach().clone().requires_grad_()
    ref = torch.nn.functional.mish(y)
    ref_grad = torch.autograd.grad(ref.sum(), y)[0]
    assert torch.isfinite(ours).all() and torch.isfinite(ours_grad).all()
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=2e-6, atol=2e-6)


def test_mish_backward_passes_gradcheck_in_float64():
    from flowrl.nets.mlp import _MishFunction

    x = (6 * torch.randn(40, 7, generator=torch.Generator().manual_seed(1))).double()
    assert torch.autograd.gradcheck(_MishFunction.apply, (x.requires_grad_(),))


def test_mish_formula_without_grad_equals_the_autograd_path():
    x = _mish_inputs(40_000)
    with torch.no_grad():
        plain = mish(x)
    assert torch.equal(plain, mish(x.clone().requires_grad_()).detach())
