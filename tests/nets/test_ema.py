import pytest
import torch
from torch import nn

from flowrl.nets import EMA


def _linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(2, 1, dtype=torch.float64)
    _set(layer, weight, bias)
    return layer


def _set(layer: nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([bias], dtype=torch.float64))


def _assert_shadow(ema: EMA, weight, bias) -> None:
    torch.testing.assert_close(
        ema.shadow.weight, torch.tensor([weight], dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        ema.shadow.bias, torch.tensor([bias], dtype=torch.float64), rtol=1e-12, atol=1e-12
    )


def test_first_two_updates_follow_warmup():
    model = _linear([1.0, 2.0], 0.5)
    ema = EMA(model, decay=0.9)
    _assert_shadow(ema, [1.0, 2.0], 0.5)  # the shadow starts as a copy
    assert ema.num_updates.item() == 0

    # Update 1 (n = 0): decay = min(0.9, 1/10) = 0.1, shadow = 0.1·s + 0.9·θ
    #   w: 0.1·[1, 2] + 0.9·[3, −2] = [2.8, −1.6];  b: 0.1·0.5 + 0.9·1.5 = 1.4
    _set(model, [3.0, -2.0], 1.5)
    ema.update(model)
    _assert_shadow(ema, [2.8, -1.6], 1.4)
    assert ema.num_updates.item() == 1

    # Update 2 (n = 1): decay = min(0.9, 2/11) = 2/11, θ = 0
    #   w: 2/11·[2.8, −1.6] = [5.6/11, −3.2/11];  b: 2/11·1.4 = 2.8/11
    _set(model, [0.0, 0.0], 0.0)
    ema.update(model)
    _assert_shadow(ema, [5.6 / 11, -3.2 / 11], 2.8 / 11)
    assert ema.num_updates.item() == 2

    # Update 3 (n = 2): decay = 3/12 = 0.25, θ = [4, 4], 4
    #   w: 0.25·[5.6/11, −3.2/11] + 0.75·4;  b: 0.25·2.8/11 + 0.75·4
    _set(model, [4.0, 4.0], 4.0)
    ema.update(model)
    _assert_shadow(ema, [1.4 / 11 + 3.0, -0.8 / 11 + 3.0], 0.7 / 11 + 3.0)


def test_many_updates_towards_a_fixed_model():
    model = _linear([1.0, -1.0], 2.0)
    ema = EMA(model, decay=0.9)
    _set(model, [0.0, 10.0], -3.0)
    # With θ fixed, the gap shadow − θ shrinks by the effective decay each update:
    #   gap_N = gap_0 · Π_{n<N} min(0.9, (1+n)/(10+n)).
    # The warm-up ends at n = 80, where (1+n)/(10+n) = 81/90 = 0.9.
    factor = 1.0
    for n in range(120):
        factor *= min(0.9, (1 + n) / (10 + n))
        ema.update(model)
    assert ema.num_updates.item() == 120
    gap_w = [1.0 - 0.0, -1.0 - 10.0]
    gap_b = 2.0 - (-3.0)
    _assert_shadow(ema, [factor * gap_w[0], 10.0 + factor * gap_w[1]], -3.0 + factor * gap_b)
    assert 0 < factor < 0.9**40

    # Past the warm-up the decay is exactly the target: one more update with a new θ moves
    # the shadow 10% of the way: s' = 0.9·s + 0.1·θ.
    before_w = ema.shadow.weight.detach().clone()
    before_b = ema.shadow.bias.detach().clone()
    _set(model, [100.0, 100.0], 100.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow.weight, 0.9 * before_w + 10.0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ema.shadow.bias, 0.9 * before_b + 10.0, rtol=1e-12, atol=1e-12)


def test_decay_zero_copies_the_model():
    model = _linear([1.0, 2.0], 3.0)
    ema = EMA(model, decay=0.0)
    _set(model, [-7.0, 8.0], 9.0)
    ema.update(model)
    # min(0, 1/10) = 0: the shadow becomes θ exactly.
    assert torch.equal(ema.shadow.weight, model.weight.detach())
    assert torch.equal(ema.shadow.bias, model.bias.detach())


def test_shadow_is_a_frozen_independent_copy():
    model = _linear([1.0, 2.0], 3.0)
    ema = EMA(model, decay=0.5)
    assert ema.shadow is not model
    assert not ema.shadow.training
    for p in ema.shadow.parameters():
        assert not p.requires_grad
        assert p.grad is None
    # Changing the model does not touch the shadow until update().
    _set(model, [5.0, 5.0], 5.0)
    _assert_shadow(ema, [1.0, 2.0], 3.0)
    # Gradients through the model never reach the shadow.
    model(torch.ones(4, 2, dtype=torch.float64)).sum().backward()
    ema.update(model)
    for p in ema.shadow.parameters():
        assert not p.requires_grad
        assert p.grad is None
    out = ema.shadow(torch.ones(4, 2, dtype=torch.float64))
    assert not out.requires_grad
    # Still a trainable model.
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, -1e-9])
def test_decay_outside_unit_interval_raises(decay):
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(2, 1), decay=decay)


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1, dtype=torch.float64)
        self.register_buffer("count", torch.tensor([3], dtype=torch.long))
        self.register_buffer("running", torch.tensor([1.0], dtype=torch.float64))
        self.register_buffer("flag", torch.tensor([False]))


def test_buffers_are_copied_not_averaged():
    model = _Counter()
    ema = EMA(model, decay=0.9)
    model.count.fill_(10)
    model.running.fill_(float("inf"))  # e.g. an unbounded normalizer limit
    model.flag.fill_(True)
    ema.update(model)
    # An average would give 0.1·3 + 0.9·10 = 9.3 (9 as a long); a copy gives 10.
    assert ema.shadow.count.dtype == torch.long
    assert ema.shadow.count.tolist() == [10]
    assert ema.shadow.flag.tolist() == [True]
    # Averaging 1 with inf would be inf here and NaN once both are inf; a copy stays inf.
    assert ema.shadow.running.item() == float("inf")
    ema.update(model)
    assert ema.shadow.running.item() == float("inf")

    model.count.fill_(-4)
    model.running.fill_(2.5)
    ema.update(model)
    assert ema.shadow.count.tolist() == [-4]
    assert ema.shadow.running.item() == 2.5


def test_ema_state_dict_round_trip():
    model = _linear([1.0, 2.0], 0.5)
    ema = EMA(model, decay=0.9)
    _set(model, [3.0, -2.0], 1.5)
    ema.update(model)
    ema.update(model)
    fresh = EMA(_linear([0.0, 0.0], 0.0), decay=0.9)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.num_updates.item() == 2
    assert torch.equal(fresh.shadow.weight, ema.shadow.weight)
    assert torch.equal(fresh.shadow.bias, ema.shadow.bias)
