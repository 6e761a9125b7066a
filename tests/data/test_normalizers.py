import numpy as np
import pytest
import torch

from flowrl.data import Normalizer


def data(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[3.0, -20.0, 0.5], scale=[0.1, 50.0, 2.0], size=(n, 3))


def test_normalize_unnormalize_inverse():
    norm = Normalizer.gaussian(data())
    generator = torch.Generator().manual_seed(0)  # not the global RNG: the suite's order varies
    x = torch.randn(7, 5, 3, generator=generator) * 10
    torch.testing.assert_close(norm.unnormalize(norm.normalize(x)), x, atol=1e-4, rtol=1e-6)
    y = torch.randn(2000, 3, generator=generator)
    # float32 round trip y -> y*scale + shift -> back: the rounding of the middle value,
    # |shift| + |y| scale ulps, returns divided by scale. With shift 3, scale 0.1 (the first
    # feature) that is ~2e-6 at worst, so a fixed 1e-6 passed only for lucky draws.
    eps = torch.finfo(torch.float32).eps
    bound = 2 * eps * (norm.shift.abs() / norm.scale + y.abs())
    assert ((norm.normalize(norm.unnormalize(y)) - y).abs() <= bound).all()
    torch.testing.assert_close(norm(x), norm.normalize(x))


def test_gaussian_standardises():
    raw = data()
    norm = Normalizer.gaussian(raw)
    assert norm.dim == 3
    out = norm.normalize(torch.as_tensor(raw, dtype=torch.float32))
    torch.testing.assert_close(out.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    assert norm.shift.dtype == torch.float32 and norm.scale.dtype == torch.float32


def test_gaussian_accepts_tensors():
    raw = data()
    a = Normalizer.gaussian(raw)
    b = Normalizer.gaussian(torch.as_tensor(raw))
    torch.testing.assert_close(a.shift, b.shift)
    torch.testing.assert_close(a.scale, b.scale)


def test_constant_feature_is_centred_not_blown_up():
    raw = data()
    raw[:, 1] = 7.0
    for norm in (Normalizer.gaussian(raw), Normalizer.from_data_range(raw)):
        out = norm.normalize(torch.as_tensor(raw, dtype=torch.float32))
        assert torch.isfinite(out).all()
        assert norm.scale[1] == 1.0
        torch.testing.assert_close(out[:, 1], torch.zeros(len(raw)), atol=1e-6, rtol=0)


def test_box_maps_bounds_to_unit_interval():
    low, high = np.array([-2.0, 0.0, 10.0]), np.array([2.0, 1.0, 30.0])
    norm = Normalizer.box(low, high)
    bounds = torch.as_tensor(np.stack([low, high]), dtype=torch.float32)
    expected = torch.tensor([[-1.0] * 3, [1.0] * 3])
    torch.testing.assert_close(norm.normalize(bounds), expected)
    torch.testing.assert_close(norm.unnormalize(expected), bounds)


def test_box_bad_bounds_raise():
    with pytest.raises(ValueError, match=r"not finite in dims \[1\]"):
        Normalizer.box(np.array([-1.0, -np.inf]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"high <= low in dims \[0\]"):
        Normalizer.box(np.array([1.0, -1.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="same shape|shape"):
        Normalizer.box(np.zeros(2), np.ones(3))


def test_from_data_range_with_margin():
    raw = np.array([[0.0, -1.0], [10.0, 1.0]])
    tight = Normalizer.from_data_range(raw)
    torch.testing.assert_close(
        tight.normalize(torch.tensor(raw, dtype=torch.float32)),
        torch.tensor([[-1.0, -1.0], [1.0, 1.0]]),
    )
    wide = Normalizer.from_data_range(raw, margin=0.5)
    # Range 10 widened by 5 on both sides: [-5, 15], so the data max lands at 0.5.
    out = wide.normalize(torch.tensor([[10.0, 1.0], [15.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="margin"):
        Normalizer.from_data_range(raw, margin=-0.1)


def test_identity():
    norm = Normalizer.identity(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(norm.normalize(x), x)
    assert norm.dim == 4
    with pytest.raises(ValueError):
        Normalizer.identity(0)


def test_invalid_scale_rejected():
    with pytest.raises(ValueError, match=r"scale must be > 0.*dims \[1\]"):
        Normalizer(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="same shape"):
        Normalizer(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match="not finite"):
        Normalizer(torch.tensor([0.0, float("nan")]), torch.ones(2))


def test_state_dict_round_trip():
    norm = Normalizer.gaussian(data())
    state = norm.state_dict()
    assert set(state) == {"shift", "scale", "low", "high"}
    restored = Normalizer.from_state_dict(state)
    torch.testing.assert_close(restored.shift, norm.shift)
    torch.testing.assert_close(restored.scale, norm.scale)
    assert torch.equal(restored.low, norm.low) and torch.equal(restored.high, norm.high)
    # States written before low/high existed still load, with an unbounded box.
    legacy = Normalizer.from_state_dict({"shift": state["shift"], "scale": state["scale"]})
    assert torch.isinf(legacy.low).all() and torch.isinf(legacy.high).all()
    other = Normalizer.identity(3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.scale, norm.scale)


def test_from_state_dict_inside_a_checkpoint():
    policy = torch.nn.Module()
    policy.obs_normalizer = Normalizer.box(-np.ones(2), np.ones(2) * 3)
    policy.head = torch.nn.Linear(2, 2)
    state = policy.state_dict()
    restored = Normalizer.from_state_dict(state, prefix="obs_normalizer.")
    torch.testing.assert_close(restored.shift, torch.ones(2))
    with pytest.raises(KeyError, match="obs_normalizer.shift"):
        Normalizer.from_state_dict({"head.weight": torch.zeros(1)}, prefix="obs_normalizer.")


def test_dim_mismatch_raises():
    norm = Normalizer.identity(3)
    with pytest.raises(ValueError, match="D=3.*last dim is 4"):
        norm.normalize(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="D=3.*last dim is 2"):
        norm.unnormalize(torch.zeros(2))


def test_buffers_follow_module_conversions():
    norm = Normalizer.gaussian(data())
    assert {name for name, _ in norm.named_buffers()} == {"shift", "scale", "low", "high"}
    assert "dim=3" in repr(norm)
    # .to() converts buffers like any module state (a device move works the same way).
    double = Normalizer.gaussian(data()).to(torch.float64)
    assert double.shift.dtype == torch.float64
    out = double.normalize(torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(out, norm.normalize(torch.zeros(2, 3)).double())


def test_unnormalize_with_clip_lands_exactly_in_the_box():
    # 0.225 − 0.125 rounds to 0.099999994 < 0.1 in float32: clip must use the bounds as given.
    low = np.array([-0.3, 0.1], dtype=np.float32)
    high = np.array([0.7, 0.35], dtype=np.float32)
    norm = Normalizer.box(low, high)
    x = torch.tensor([[-3.0, -1.0], [0.0, 5.0], [1.0, 1.0]])
    out = norm.unnormalize(x, clip=True)
    assert (out >= torch.from_numpy(low)).all() and (out <= torch.from_numpy(high)).all()
    assert out[0, 1].item() == np.float32(0.1)
    # Inside the box, clipping changes nothing.
    torch.testing.assert_close(out[1, 0], norm.unnormalize(x)[1, 0])
    # Gaussian normalizers have no box: clip only clamps to [−1, 1] in normalized space.
    g = Normalizer.gaussian(data())
    torch.testing.assert_close(
        g.unnormalize(x[:, :1].expand(3, 3), clip=True),
        g.unnormalize(x[:, :1].expand(3, 3).clamp(-1, 1)),
    )
