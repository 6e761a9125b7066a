"""What the reliability suite shares: planted payload files and a check that none ran."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch


class Payload:
    """Unpickling this touches ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class Planter:
    """Writes files that run a payload when unpickled, in each format a loader may meet."""

    def __init__(self, marker: Path):
        self.marker = marker

    def torch_file(self, path: Path, wrap: bool = True) -> Path:
        """A torch checkpoint (zip) whose pickle holds the payload, inside a plausible dict."""
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {"kind": "x", "state_dict": Payload(self.marker)} if wrap else Payload(self.marker)
        torch.save(obj, path)
        return path

    def raw_pickle(self, path: Path) -> Path:
        """A plain pickle file (no zip container)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps({"state_dict": Payload(self.marker)}))
        return path

    def npz(self, path: Path) -> Path:
        """An .npz whose observations array is an object array holding the payload."""
        path.parent.mkdir(parents=True, exist_ok=True)
        observations = np.empty(1, dtype=object)
        observations[0] = Payload(self.marker)
        with path.open("wb") as file:
            np.savez(file, observations=observations, actions=np.zeros((1, 1), np.float32))
        return path

    def ran(self) -> bool:
        """Whether any payload ran."""
        return self.marker.exists()


@pytest.fixture
def planter(tmp_path):
    """A :class:`Planter` whose marker sits in the test's folder; it asserts nothing ran."""
    plant = Planter(tmp_path / "PAYLOAD_RAN")
    yield plant
    assert not plant.ran(), "a planted payload ran"
