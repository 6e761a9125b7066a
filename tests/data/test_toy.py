import numpy as np
import pytest

from flowrl.data import (
    MIXTURE_STD,
    OfflineDataset,
    assign_modes,
    mixture_centers,
    mixture_dataset,
    sample_mixture,
)


def test_centers():
    four = mixture_centers("4gaussians")
    assert four.shape == (4, 2) and four.dtype == np.float32
    expected = np.array([[0.6, 0.0], [-0.6, 0.0], [0.0, 0.6], [0.0, -0.6]])
    assert all(np.abs(four - c).max(axis=1).min() < 1e-6 for c in expected)
    eight = mixture_centers("8gaussians")
    assert eight.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(eight, axis=1), 0.6, rtol=1e-6)
    np.testing.assert_allclose(eight[0], [0.6, 0.0], atol=1e-7)
    np.testing.assert_allclose(eight[2], [0.0, 0.6], atol=1e-7)


def test_unknown_kind_lists_known():
    with pytest.raises(ValueError, match="4gaussians.*8gaussians"):
        mixture_centers("swissroll")


def test_sample_shapes_and_seed_reproducibility():
    a = sample_mixture("8gaussians", 300, seed=3)
    assert a.shape == (300, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sample_mixture("8gaussians", 300, seed=3))
    np.testing.assert_array_equal(
        a, sample_mixture("8gaussians", 300, seed=np.random.default_rng(3))
    )
    assert not np.array_equal(a, sample_mixture("8gaussians", 300, seed=4))
    assert MIXTURE_STD == 0.08


@pytest.mark.parametrize("kind", ["4gaussians", "8gaussians"])
def test_modes_are_covered_and_balanced(kind):
    n = 4000
    centers = mixture_centers(kind)
    modes = assign_modes(sample_mixture(kind, n, seed=0), centers, radius=4 * MIXTURE_STD)
    assert modes.shape == (n,)
    counts = np.bincount(modes[modes >= 0], minlength=len(centers))
    # At radius 4 std only ~0.03% of a 2-D Gaussian falls outside.
    assert (modes == -1).sum() < n * 0.01
    expected = n / len(centers)
    assert np.all(np.abs(counts - expected) < 0.2 * expected), counts


def test_assign_modes_marks_outliers():
    centers = np.array([[0.0, 0.0], [1.0, 0.0]])
    samples = np.array([[0.05, 0.0], [0.9, 0.1], [0.5, 3.0]])
    np.testing.assert_array_equal(assign_modes(samples, centers, radius=0.2), [0, 1, -1])
    with pytest.raises(ValueError, match="share D"):
        assign_modes(np.zeros((3, 3)), centers, radius=1.0)


def test_mixture_dataset_is_valid_episodic_data():
    data = mixture_dataset("4gaussians", 250, seed=1)
    assert isinstance(data, OfflineDataset)
    assert data.observations.shape == (250, 1) and not data.observations.any()
    assert data.actions.shape == (250, 2)
    np.testing.assert_array_equal(data.actions, sample_mixture("4gaussians", 250, seed=1))
    assert data.next_observations.shape == (250, 1)
    assert not data.rewards.any() and not data.terminals.any()
    np.testing.assert_array_equal(np.flatnonzero(data.timeouts), [99, 199, 249])
