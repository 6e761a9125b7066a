"""Offline datasets, normalisation and toy data for flowrl.

* :class:`OfflineDataset` holds validated flat transition arrays (D4RL layout);
  :func:`load_dataset` builds one from a ``.npz`` file, a dict of arrays or a Minari id.
* :func:`load_minari` / :func:`save_minari` convert from and to Minari datasets (minari is
  only imported when they are called).
* :func:`collect_dataset` records a policy's rollouts (an SB3 teacher, a function or
  :func:`random_policy`) as a dataset.
* :func:`chunk_actions` turns per-step actions into chunks of Ta (for policies that act in
  chunks, :class:`flowrl.envs.ActionChunk`).
* :class:`Normalizer` is the per-feature affine scaling that travels inside checkpoints.
* :mod:`flowrl.data.toy` has 2-D Gaussian mixtures for demos and tests.
"""

from flowrl.data.chunks import check_chunk, chunk_actions
from flowrl.data.collect import CollectedData, collect_dataset, random_policy
from flowrl.data.datasets import KEYS, OfflineDataset, load_dataset
from flowrl.data.minari_io import load_minari, save_minari
from flowrl.data.normalizers import Normalizer
from flowrl.data.toy import (
    MIXTURE_STD,
    assign_modes,
    mixture_centers,
    mixture_dataset,
    sample_mixture,
)

__all__ = [
    "KEYS",
    "CollectedData",
    "MIXTURE_STD",
    "Normalizer",
    "OfflineDataset",
    "assign_modes",
    "check_chunk",
    "chunk_actions",
    "collect_dataset",
    "load_dataset",
    "load_minari",
    "mixture_centers",
    "mixture_dataset",
    "random_policy",
    "sample_mixture",
    "save_minari",
]
