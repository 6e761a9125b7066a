"""flowrl.data.chunk_actions: chunks stay within their episode and describe what is played."""

import numpy as np
import pytest

from flowrl.data import OfflineDataset, chunk_actions


def _data():
    # 3 episodes: rows 0-2 (terminal), 3-6 (time limit), 7-8 (unfinished at the end).
    n = 9
    return OfflineDataset(
        observations=np.arange(n, dtype=np.float32)[:, None],
        actions=np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32),
        rewards=np.arange(n, dtype=np.float32) * 10,
        next_observations=np.arange(1, n + 1, dtype=np.float32)[:, None],
        terminals=np.isin(np.arange(n), [2]),
        timeouts=np.isin(np.arange(n), [6]),
    )


def test_chunks_are_padded_with_the_episode_last_action():
    chunked = chunk_actions(_data(), 3)
    assert chunked.actions.shape == (9, 6)
    steps = chunked.actions.reshape(9, 3, 2)[:, :, 0]  # which row each action came from
    np.testing.assert_array_equal(
        steps,
        [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 5], [4, 5, 6], [5, 6, 6], [6, 6, 6],
         [7, 8, 8], [8, 8, 8]],
    )  # fmt: skip
    np.testing.assert_array_equal(chunked.actions.reshape(9, 3, 2)[:, :, 1], -steps)
    np.testing.assert_array_equal(chunked.observations, _data().observations)
    # reward: the sum over the chunk's real steps; the rest: its last real step's
    np.testing.assert_allclose(chunked.rewards, [30, 30, 20, 120, 150, 110, 60, 150, 80])
    np.testing.assert_array_equal(chunked.next_observations[:, 0], steps[:, -1] + 1)
    np.testing.assert_array_equal(chunked.terminals, [1, 1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(chunked.timeouts, [0, 0, 0, 0, 1, 1, 1, 0, 0])


def test_chunk_one_is_the_data_and_flags_are_needed():
    data = _data()
    assert chunk_actions(data, 1) is data
    bare = OfflineDataset(observations=data.observations, actions=data.actions)
    with pytest.raises(ValueError, match="needs terminals and timeouts"):
        chunk_actions(bare, 2)
    with pytest.raises(ValueError, match="integer >= 1"):
        chunk_actions(data, 0)


def test_episode_ends_are_the_flagged_rows():
    np.testing.assert_array_equal(_data().episode_ends(), [2, 6])  # row 8 ends nothing yet
    bare = OfflineDataset(observations=_data().observations, actions=_data().actions)
    with pytest.raises(ValueError, match="needs terminals and timeouts"):
        bare.episode_ends()
