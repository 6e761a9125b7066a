import re

import gymnasium
import numpy as np
import pytest
import torch

from flowrl.data import KEYS, OfflineDataset, load_dataset


def make_arrays(n: int = 50, do: int = 3, da: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, do))
    timeouts = np.zeros(n, dtype=bool)
    timeouts[-1] = True
    return {
        "observations": obs[:-1],
        "actions": rng.uniform(-1, 1, (n, da)),
        "rewards": rng.standard_normal(n),
        "next_observations": obs[1:],
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": timeouts,
    }


def test_keys_constant():
    assert KEYS == (
        "observations",
        "actions",
        "rewards",
        "next_observations",
        "terminals",
        "timeouts",
    )


def test_from_dict_converts_and_round_trips(assert_same_dataset):
    arrays = make_arrays()
    arrays["terminals"] = arrays["terminals"].astype(np.float64)  # 0/1 floats become bools
    arrays["extra_info"] = np.arange(3)  # unknown keys are ignored
    data = OfflineDataset.from_dict(arrays)
    assert len(data) == 50 and data.obs_dim == 3 and data.action_dim == 1
    for key in ("observations", "actions", "rewards", "next_observations"):
        assert getattr(data, key).dtype == np.float32
        np.testing.assert_allclose(getattr(data, key), arrays[key], rtol=1e-6)
    assert data.terminals.dtype == np.bool_ and data.timeouts.dtype == np.bool_
    assert set(data.to_dict()) == set(KEYS)
    assert_same_dataset(OfflineDataset.from_dict(data.to_dict()), data)


def test_from_dict_accepts_torch_tensors_and_optional_keys():
    arrays = make_arrays()
    data = OfflineDataset.from_dict(
        {"observations": torch.as_tensor(arrays["observations"]), "actions": arrays["actions"]}
    )
    assert isinstance(data.observations, np.ndarray)
    assert data.rewards is None and data.timeouts is None
    assert "N=50" in repr(data)


def test_npz_round_trip(tmp_path, assert_same_dataset):
    data = OfflineDataset.from_dict(make_arrays())
    path = tmp_path / "nested" / "dir" / "data.npz"
    data.save_npz(path)
    assert path.is_file()
    assert_same_dataset(OfflineDataset.load_npz(path), data)
    assert_same_dataset(load_dataset(str(path)), data)
    assert_same_dataset(load_dataset(path), data)


def test_npz_writes_only_present_keys_at_exact_path(tmp_path, assert_same_dataset):
    arrays = make_arrays()
    data = OfflineDataset(arrays["observations"], arrays["actions"])
    path = tmp_path / "plain.data"
    data.save_npz(path)
    assert path.is_file()  # numpy would have written plain.data.npz
    with np.load(path) as archive:
        assert sorted(archive.files) == ["actions", "observations"]
    assert_same_dataset(OfflineDataset.load_npz(path), data)


def test_load_npz_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        OfflineDataset.load_npz(path)


def test_load_dataset_passthrough_and_mapping(assert_same_dataset):
    data = OfflineDataset.from_dict(make_arrays())
    assert load_dataset(data) is data
    assert_same_dataset(load_dataset(make_arrays()), data)
    with pytest.raises(TypeError, match="load_dataset expects"):
        load_dataset(42)  # type: ignore[arg-type]


def test_missing_keys_raise_key_error_naming_them():
    arrays = make_arrays()
    del arrays["actions"]
    with pytest.raises(KeyError) as info:
        OfflineDataset.from_dict(arrays)
    message = str(info.value)
    assert "actions" in message and "required" in message and "rewards" in message


def test_one_dimensional_observations_rejected():
    with pytest.raises(
        ValueError, match=re.escape("observations must have shape (N, Do), got (100,)")
    ):
        OfflineDataset(np.zeros(100), np.zeros((100, 2)))
    with pytest.raises(ValueError, match=re.escape("actions must have shape (N, Da)")):
        OfflineDataset(np.zeros((100, 3)), np.zeros(100))


def test_mismatched_rows_rejected():
    arrays = make_arrays()
    arrays["actions"] = arrays["actions"][:-1]
    with pytest.raises(ValueError, match="actions has 49 rows but observations has 50"):
        OfflineDataset.from_dict(arrays)
    arrays = make_arrays()
    arrays["rewards"] = arrays["rewards"][:10]
    with pytest.raises(ValueError, match="rewards must have shape"):
        OfflineDataset.from_dict(arrays)
    arrays = make_arrays()
    arrays["next_observations"] = arrays["next_observations"][:, :2]
    with pytest.raises(ValueError, match="next_observations must have the shape"):
        OfflineDataset.from_dict(arrays)


def test_column_rewards_rejected_with_hint():
    arrays = make_arrays()
    arrays["rewards"] = arrays["rewards"][:, None]
    with pytest.raises(ValueError, match="reshape"):
        OfflineDataset.from_dict(arrays)


def test_nan_in_actions_names_key_count_and_row():
    arrays = make_arrays()
    arrays["actions"][7, 0] = np.nan
    arrays["actions"][9, 0] = np.inf
    with pytest.raises(ValueError, match=r"actions has 2 non-finite values.*first at row 7"):
        OfflineDataset.from_dict(arrays)


def test_float32_overflow_is_caught():
    arrays = make_arrays()
    arrays["rewards"][3] = 1e300
    with pytest.raises(ValueError, match="rewards.*row 3"):
        OfflineDataset.from_dict(arrays)


def test_non_binary_flags_rejected():
    arrays = make_arrays()
    arrays["terminals"] = np.full(50, 0.5)
    with pytest.raises(ValueError, match="terminals must hold only 0/1"):
        OfflineDataset.from_dict(arrays)


def test_empty_dataset_rejected():
    with pytest.raises(ValueError, match="dataset is empty"):
        OfflineDataset(np.zeros((0, 3)), np.zeros((0, 1)))


def test_check_spaces_matching_pendulum():
    env = gymnasium.make("Pendulum-v1")
    arrays = make_arrays(do=3, da=1)
    arrays["actions"] = arrays["actions"] * 2.0  # Pendulum torques lie in [-2, 2]
    data = OfflineDataset.from_dict(arrays)
    data.check_spaces(env.observation_space, env.action_space)
    env.close()


def test_check_spaces_wrong_action_dim():
    env = gymnasium.make("Pendulum-v1")
    data = OfflineDataset.from_dict(make_arrays(do=3, da=3))
    with pytest.raises(
        ValueError, match=re.escape("Da=3 but the env's action space has shape (1,)")
    ):
        data.check_spaces(env.observation_space, env.action_space)
    with pytest.raises(ValueError, match=re.escape("Do=3")):
        data.check_spaces(gymnasium.spaces.Box(-1, 1, (4,)), env.action_space)
    env.close()


def test_check_spaces_discrete_rejected():
    data = OfflineDataset.from_dict(make_arrays())
    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (3,))
    with pytest.raises(ValueError, match="Box.*Discrete"):
        data.check_spaces(obs_space, gymnasium.spaces.Discrete(2))


def test_check_spaces_actions_out_of_bounds():
    arrays = make_arrays(da=2)
    arrays["actions"][:] = 0.0
    arrays["actions"][4] = [1.5, 0.0]
    arrays["actions"][5] = [1.0 + 5e-5, 0.0]  # within tolerance: float round-off
    data = OfflineDataset.from_dict(arrays)
    obs_space = gymnasium.spaces.Box(-np.inf, np.inf, (3,))
    with pytest.raises(ValueError, match=r"1 action values in 1 rows.*max violation 0\.5.*clip"):
        data.check_spaces(obs_space, gymnasium.spaces.Box(-1, 1, (2,)))


def test_sample_shapes_dtypes_and_reproducibility():
    data = OfflineDataset.from_dict(make_arrays(n=50, do=3, da=2))
    obs, act = data.sample(16, generator=torch.Generator().manual_seed(0))
    assert obs.shape == (16, 3) and act.shape == (16, 2)
    assert obs.dtype == torch.float32 and act.dtype == torch.float32
    obs2, act2 = data.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(obs, obs2) and torch.equal(act, act2)
    obs3, _ = data.sample(16, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(obs, obs3)
    # Rows stay paired: every sampled (obs, action) is a row of the dataset.
    rows = torch.cat([obs, act], dim=1).numpy()
    table = np.concatenate([data.observations, data.actions], axis=1)
    assert all((table == row).all(axis=1).any() for row in rows)
    with pytest.raises(ValueError, match="batch_size"):
        data.sample(0)


def test_sample_works_on_read_only_arrays():
    arrays = make_arrays()
    for value in arrays.values():
        value.flags.writeable = False
    data = OfflineDataset.from_dict(arrays)
    obs, _ = data.sample(4)
    assert obs.shape == (4, 3)
