import ast
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest

import flowrl.data
from flowrl.data import OfflineDataset, load_dataset, load_minari, save_minari

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402

EPISODE_STEPS = 20
N_EPISODES = 3
DATASET_ID = "flowrl-test/pendulum-random-v0"


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    # Set before anything touches minari, which reads it on every call.
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def rollouts(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random-action Pendulum episodes, as minari's DataCollector would record them."""
    env = gymnasium.make("Pendulum-v1", max_episode_steps=EPISODE_STEPS)
    env.action_space.seed(seed)
    episodes = []
    for i in range(N_EPISODES):
        obs, _ = env.reset(seed=seed + i)
        record = {"observations": [obs], "actions": [], "rewards": [], "term": [], "trunc": []}
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            record["observations"].append(obs)
            record["actions"].append(action)
            record["rewards"].append(reward)
            record["term"].append(terminated)
            record["trunc"].append(truncated)
            done = terminated or truncated
        episodes.append({key: np.asarray(value) for key, value in record.items()})
    env.close()
    return episodes


def create_pendulum_dataset(episodes):
    # minari's DataCollector needs jax (minari[create]); create_dataset_from_buffers writes
    # the same on-disk format without it.
    buffers = [
        EpisodeBuffer(
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["term"],
            truncations=ep["trunc"],
            infos={},
        )
        for ep in episodes
    ]
    with pytest.warns(UserWarning):  # minari warns about unset author etc.
        return minari.create_dataset_from_buffers(
            dataset_id=DATASET_ID,
            buffer=buffers,
            env=gymnasium.make("Pendulum-v1", max_episode_steps=EPISODE_STEPS),
            algorithm_name="random",
        )


def test_load_minari_by_id(minari_root, assert_same_dataset):
    episodes = rollouts()
    create_pendulum_dataset(episodes)
    assert (minari_root / DATASET_ID / "data").is_dir()

    data = load_minari(DATASET_ID)
    n = EPISODE_STEPS * N_EPISODES
    assert len(data) == n == minari.load_dataset(DATASET_ID).total_steps
    assert data.observations.shape == (n, 3) and data.next_observations.shape == (n, 3)
    assert data.actions.shape == (n, 1)
    assert data.rewards.shape == data.terminals.shape == data.timeouts.shape == (n,)
    ends = np.arange(1, N_EPISODES + 1) * EPISODE_STEPS - 1
    np.testing.assert_array_equal(np.flatnonzero(data.timeouts), ends)
    assert not data.terminals.any()
    # Within an episode the next observation is the following row's observation.
    inner = np.setdiff1d(np.arange(n - 1), ends)
    np.testing.assert_array_equal(data.next_observations[inner], data.observations[inner + 1])
    # And the arrays are exactly what was recorded.
    np.testing.assert_allclose(
        data.observations, np.concatenate([ep["observations"][:-1] for ep in episodes])
    )
    np.testing.assert_allclose(
        data.next_observations, np.concatenate([ep["observations"][1:] for ep in episodes])
    )
    np.testing.assert_allclose(
        data.rewards, np.concatenate([ep["rewards"] for ep in episodes]), rtol=1e-6
    )
    env = gymnasium.make("Pendulum-v1")
    data.check_spaces(env.observation_space, env.action_space)
    # load_dataset treats a non-.npz string as a Minari id.
    assert_same_dataset(load_dataset(DATASET_ID), data)


def test_load_minari_accepts_loaded_and_filtered_dataset(minari_root):
    create_pendulum_dataset(rollouts())
    dataset = minari.load_dataset(DATASET_ID)
    assert len(load_minari(dataset)) == EPISODE_STEPS * N_EPISODES
    first = dataset.filter_episodes(lambda episode: episode.id == 0)
    data = load_minari(first)
    assert len(data) == EPISODE_STEPS
    np.testing.assert_array_equal(np.flatnonzero(data.timeouts), [EPISODE_STEPS - 1])


def test_data_collector_dataset(minari_root):
    pytest.importorskip("jax", reason="minari.DataCollector needs minari[create] (jax)")
    env = minari.DataCollector(gymnasium.make("Pendulum-v1", max_episode_steps=EPISODE_STEPS))
    env.action_space.seed(0)
    for episode in range(N_EPISODES):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    env.create_dataset(dataset_id=DATASET_ID, algorithm_name="random")
    data = load_minari(DATASET_ID)
    assert len(data) == EPISODE_STEPS * N_EPISODES
    assert data.timeouts.sum() == N_EPISODES


def test_unknown_id_says_where_it_looked(minari_root):
    with pytest.raises(FileNotFoundError) as info:
        load_minari("flowrl-test/does-not-exist-v0")
    message = str(info.value)
    assert "flowrl-test/does-not-exist-v0" in message
    assert str(minari_root) in message and "MINARI_DATASETS_PATH" in message


def test_dict_observations_rejected(minari_root):
    obs_space = gymnasium.spaces.Dict(
        {"a": gymnasium.spaces.Box(-1, 1, (2,)), "b": gymnasium.spaces.Box(-1, 1, (1,))}
    )
    buffer = EpisodeBuffer(
        observations={"a": np.zeros((3, 2), np.float32), "b": np.zeros((3, 1), np.float32)},
        actions=np.zeros((2, 1), np.float32),
        rewards=np.zeros(2),
        terminations=np.zeros(2, bool),
        truncations=np.array([False, True]),
        infos={},
    )
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers(
            dataset_id="flowrl-test/dict-obs-v0",
            buffer=[buffer],
            observation_space=obs_space,
            action_space=gymnasium.spaces.Box(-1, 1, (1,)),
        )
    with pytest.raises(ValueError, match="flat Box observation.*flatten"):
        load_minari("flowrl-test/dict-obs-v0")


def flat_dataset(n: int = 45, seed: int = 0, ends=(9, 29)) -> OfflineDataset:
    """A chain of observations with episode ends at ``ends``; the last episode is unfinished."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, 4)).astype(np.float32)
    next_obs = np.empty_like(obs)
    next_obs[:-1] = obs[1:]
    next_obs[-1] = rng.standard_normal(4)
    for end in ends:  # a fresh episode starts after each end
        next_obs[end] = rng.standard_normal(4)
    terminals = np.zeros(n, bool)
    terminals[ends[0]] = True
    timeouts = np.zeros(n, bool)
    timeouts[list(ends[1:])] = True
    return OfflineDataset(
        observations=obs,
        actions=rng.uniform(-1, 1, (n, 2)),
        rewards=rng.standard_normal(n),
        next_observations=next_obs,
        terminals=terminals,
        timeouts=timeouts,
    )


def test_save_then_load_round_trip(minari_root, assert_same_dataset):
    data = flat_dataset()
    dataset = save_minari(data, "flowrl-test/roundtrip-v0", description="round trip")
    assert dataset.total_episodes == 3 and dataset.total_steps == len(data)
    assert dataset.action_space == gymnasium.spaces.Box(-1, 1, (2,), np.float32)
    assert np.isinf(dataset.observation_space.high).all()
    loaded = load_minari("flowrl-test/roundtrip-v0")
    for key in ("observations", "actions", "rewards", "next_observations", "terminals"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(data, key), err_msg=key)
    # The final unfinished episode is stored as truncated.
    expected_timeouts = data.timeouts.copy()
    expected_timeouts[-1] = True
    np.testing.assert_array_equal(loaded.timeouts, expected_timeouts)
    # Saving the loaded copy again changes nothing.
    save_minari(loaded, "flowrl-test/roundtrip-v1")
    assert_same_dataset(load_minari("flowrl-test/roundtrip-v1"), loaded)


def test_save_with_env_records_spec_and_unbounded_actions(minari_root, assert_same_dataset):
    episodes = rollouts()
    data = OfflineDataset(
        observations=np.concatenate([ep["observations"][:-1] for ep in episodes]),
        actions=np.concatenate([ep["actions"] for ep in episodes]),
        rewards=np.concatenate([ep["rewards"] for ep in episodes]),
        next_observations=np.concatenate([ep["observations"][1:] for ep in episodes]),
        terminals=np.concatenate([ep["term"] for ep in episodes]),
        timeouts=np.concatenate([ep["trunc"] for ep in episodes]),
    )
    dataset = save_minari(data, "flowrl-test/pendulum-saved-v0", env="Pendulum-v1")
    assert dataset.spec.env_spec.id == "Pendulum-v1"
    assert dataset.action_space.shape == (1,) and dataset.action_space.high[0] == 2.0
    assert_same_dataset(load_minari("flowrl-test/pendulum-saved-v0"), data)
    # Without an env, Pendulum's [-2, 2] torques do not fit [-1, 1]: the box is unbounded.
    unbounded = save_minari(data, "flowrl-test/pendulum-saved-v1")
    assert np.isinf(unbounded.action_space.high).all()


def test_save_rejects_data_that_does_not_fit_env(minari_root):
    with pytest.raises(ValueError, match="Do=4"):
        save_minari(flat_dataset(), "flowrl-test/mismatch-v0", env="Pendulum-v1")


def test_save_requires_episode_fields(minari_root):
    data = flat_dataset()
    partial = OfflineDataset(data.observations, data.actions, rewards=data.rewards)
    with pytest.raises(ValueError, match=r"\['next_observations', 'terminals', 'timeouts'\]"):
        save_minari(partial, "flowrl-test/partial-v0")


def test_save_rejects_broken_observation_chain(minari_root):
    data = flat_dataset()
    data.next_observations[3] += 1.0
    with pytest.raises(ValueError, match="first i = 3"):
        save_minari(data, "flowrl-test/broken-v0")
    assert not (minari_root / "flowrl-test" / "broken-v0").exists()


def test_save_rejects_bad_id_and_unknown_metadata(minari_root):
    with pytest.raises(ValueError, match="version suffix"):
        save_minari(flat_dataset(), "flowrl-test/no-version")
    with pytest.raises(TypeError, match="colour"):
        save_minari(flat_dataset(), "flowrl-test/meta-v0", colour="blue")


def test_missing_minari_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` fail
    with pytest.raises(ImportError, match=r'pip install "minari\[hdf5\]"'):
        load_minari("anything-v0")


def test_flowrl_data_does_not_import_minari_at_import_time():
    # Checked statically: importing in a subprocess would cost seconds of torch import.
    package = Path(flowrl.data.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; function bodies may import it
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name.split(".")[0] in {"minari", "h5py"} for name in names), path
