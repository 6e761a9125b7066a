import math

import pytest
import torch

from flowrl.nets import SinusoidalEmbedding


@pytest.mark.parametrize("dim", [2, 8, 32])
def test_output_shape_and_range(dim):
    emb = SinusoidalEmbedding(dim)
    x = torch.linspace(0.0, 1.0, 17)
    out = emb(x)
    assert out.shape == (17, dim)
    assert out.dtype == torch.float32
    assert out.min().item() >= -1.0
    assert out.max().item() <= 1.0


@pytest.mark.parametrize("dim", [2, 6, 32])
def test_sin_cos_pairs_have_unit_norm(dim):
    emb = SinusoidalEmbedding(dim)
    x = torch.rand(50, generator=torch.Generator().manual_seed(0)) * 3.0 - 1.0
    out = emb(x)
    half = dim // 2
    norms = out[:, :half].square() + out[:, half:].square()
    torch.testing.assert_close(norms, torch.ones(50, half), atol=1e-6, rtol=0)


def test_layout_is_sin_then_cos_of_frequencies():
    emb = SinusoidalEmbedding(8, min_frequency=2.0, max_frequency=16.0)
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = emb(x)
    angles = x[:, None] * emb.frequencies
    torch.testing.assert_close(out[:, :4], torch.sin(angles))
    torch.testing.assert_close(out[:, 4:], torch.cos(angles))
    # x = 0: every sine is 0 and every cosine is 1.
    assert torch.equal(out[0], torch.tensor([0.0] * 4 + [1.0] * 4))


@pytest.mark.parametrize(
    ("dim", "lo", "hi"), [(4, 1.0, 32.0), (16, 0.5, 100.0), (10, 3.0, 3.0), (64, 1.0, 1e4)]
)
def test_frequencies_span_range_geometrically(dim, lo, hi):
    emb = SinusoidalEmbedding(dim, min_frequency=lo, max_frequency=hi)
    freqs = emb.frequencies.double()
    n = dim // 2
    assert freqs.shape == (n,)
    assert freqs[0].item() == pytest.approx(lo, rel=1e-5)
    assert freqs[-1].item() == pytest.approx(hi, rel=1e-5)
    ratio = (hi / lo) ** (1.0 / (n - 1))
    torch.testing.assert_close(
        freqs[1:] / freqs[:-1], torch.full((n - 1,), ratio, dtype=torch.float64), rtol=1e-5, atol=0
    )
    expected = lo * ratio ** torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(freqs, expected, rtol=1e-5, atol=0)


def test_default_frequencies_are_one_to_thirty_two():
    emb = SinusoidalEmbedding(32)
    assert emb.frequencies[0].item() == pytest.approx(1.0, rel=1e-6)
    assert emb.frequencies[-1].item() == pytest.approx(32.0, rel=1e-6)
    assert math.isclose(
        (emb.frequencies[1] / emb.frequencies[0]).item(), 32.0 ** (1 / 15), rel_tol=1e-5
    )


def test_frequencies_are_not_saved():
    emb = SinusoidalEmbedding(8)
    assert list(emb.state_dict()) == []
    assert "frequencies" in dict(emb.named_buffers())


@pytest.mark.parametrize("dim", [1, 3, 7, 0, -2])
def test_bad_dim_raises(dim):
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(dim)


@pytest.mark.parametrize(("lo", "hi"), [(0.0, 32.0), (-1.0, 32.0), (8.0, 4.0), (-2.0, -1.0)])
def test_bad_frequencies_raise(lo, hi):
    with pytest.raises(ValueError, match="min_frequency"):
        SinusoidalEmbedding(8, min_frequency=lo, max_frequency=hi)


@pytest.mark.parametrize("shape", [(), (4, 1), (2, 3), (1, 1, 1)])
def test_non_1d_input_raises(shape):
    emb = SinusoidalEmbedding(8)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        emb(torch.zeros(shape))


def test_double_input_is_embedded_in_buffer_dtype():
    emb = SinusoidalEmbedding(6)
    x = torch.tensor([0.1, 0.7], dtype=torch.float64)
    out = emb(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, emb(x.float()))
