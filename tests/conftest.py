"""Fixtures shared by the whole suite."""

import numpy as np
import pytest
import torch

from flowrl.data.datasets import KEYS, OfflineDataset


@pytest.fixture(autouse=True)
def _one_thread():
    # The suite's networks are tiny: a second intra-op thread only adds synchronisation, and
    # when the 2 CI cores are shared the matmuls crawl (8 ms per Linear call, measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """Run a test with float64 as torch's default dtype (finite differences, exactness)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def assert_same_dataset():
    """A checker that two OfflineDatasets hold identical arrays with identical dtypes."""

    def check(a: OfflineDataset, b: OfflineDataset) -> None:
        for key in KEYS:
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None) == (y is None), key
            if x is not None:
                assert x.dtype == y.dtype, key
                np.testing.assert_array_equal(x, y, err_msg=key)

    return check
