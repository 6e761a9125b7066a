"""Generator data sets and metrics."""

import pytest
import torch

from flowrl.generative.data import DIRECTIONS, digits, mixture, mixture_modes, moving_squares
from flowrl.generative.metrics import frechet_distance, motion_directions, train_digit_classifier
from flowrl.generative.visualize import image_grid, save_samples, video_strips


def test_digits_shapes_and_range():
    for size in (8, 16):
        images, labels = digits(size)
        assert images.shape == (1797, 1, size, size) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1
        assert set(labels.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="size 8 or 16"):
        digits(12)


def test_mixture_modes_and_labels():
    x, y = mixture(4000, radius=3.0, std=0.05, seed=1)
    modes = torch.as_tensor(mixture_modes(radius=3.0))
    assert x.shape == (4000, 2) and torch.allclose(modes.norm(dim=1), torch.full((8,), 3.0))
    assert (x - modes[y]).norm(dim=1).max() < 0.4
    assert torch.equal(mixture(10, seed=2)[0], mixture(10, seed=2)[0])


def test_moving_squares_move_as_labelled():
    videos, labels = moving_squares(200, frames=8, size=16, square=4, seed=0)
    assert videos.shape == (200, 1, 8, 16, 16)
    # Every frame shows one whole square.
    assert ((videos > 0).sum(dim=(-1, -2)) == 16).all()
    assert torch.equal(motion_directions(videos), labels)
    # The first move follows the label exactly.
    first = (videos[:, 0, 0] > 0).nonzero()[::16, 1:]  # top-left corner of frame 0
    second = (videos[:, 0, 1] > 0).nonzero()[::16, 1:]
    assert torch.equal(second - first, torch.tensor(DIRECTIONS)[labels])


def test_motion_directions_of_blank_video():
    assert motion_directions(-torch.ones(2, 1, 3, 8, 8)).tolist() == [-1, -1]


def test_frechet_distance_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    b = 2.0 * torch.randn(20000, 3, generator=gen, dtype=torch.float64) + torch.tensor([1.0, 0, 0])
    # N(0, I) vs N(μ, 4I): ‖μ‖² + 3·(1 + 4 − 2·2) = 1 + 3.
    assert abs(frechet_distance(a, b) - 4.0) < 0.1
    assert abs(frechet_distance(a, a)) < 1e-8
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a[:, :2], b)


def test_digit_classifier_separates_real_digits_from_noise():
    model, accuracy = train_digit_classifier(epochs=15)
    assert accuracy > 0.9
    images, _ = digits()
    real = model.features(images)
    noise = model.features(torch.rand(900, 1, 8, 8) * 2 - 1)
    assert frechet_distance(real[:900], real[900:]) < 0.2 * frechet_distance(real[:900], noise)


def test_pictures(tmp_path):
    assert image_grid(torch.zeros(5, 1, 4, 4), nrow=3).shape == (1, 2 * 5 + 1, 3 * 5 + 1)
    assert video_strips(torch.zeros(2, 1, 3, 4, 4)).shape == (1, 2 * 5 + 1, 3 * 5 + 1)
    for samples in (torch.randn(50, 2), torch.rand(4, 1, 8, 8), torch.rand(2, 1, 3, 8, 8)):
        path = tmp_path / f"{samples.dim()}.png"
        save_samples(samples, path)
        assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="cannot draw"):
        save_samples(torch.randn(3, 5), tmp_path / "bad.png")
