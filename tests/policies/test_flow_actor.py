import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from flowrl.data import Normalizer
from flowrl.policies import FlowActor, FlowActorConfig

LOW = np.array([-2.0, 0.5], dtype=np.float32)
HIGH = np.array([1.0, 3.0], dtype=np.float32)


def _obs_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(loc=[1.0, -3.0, 0.2], scale=[0.5, 4.0, 2.0], size=(64, 3)).astype(np.float32)


def _actor(low=LOW, high=HIGH, **overrides) -> FlowActor:
    config = FlowActorConfig(obs_dim=3, action_dim=2, width=32, depth=1, **overrides)
    return FlowActor(config, Normalizer.gaussian(_obs_data()), Normalizer.box(low, high))


def _randomise(actor: FlowActor, seed: int = 0) -> FlowActor:
    torch.manual_seed(seed)
    nn.init.normal_(actor.velocity_net.output.weight)
    nn.init.normal_(actor.velocity_net.output.bias)
    return actor


def _obs(B: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(_obs_data(seed + 1)[:B])


# ---------------------------------------------------------------------- sampling


@pytest.mark.parametrize("B", [1, 7])
def test_sample_shape(B):
    actor = _randomise(_actor())
    actions = actor.sample(_obs(B))
    assert actions.shape == (B, 2)
    assert actions.dtype == torch.float32
    assert torch.isfinite(actions).all()


def test_same_noise_gives_same_actions():
    actor = _randomise(_actor())
    obs = _obs()
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    first = actor.sample(obs, noise=noise)
    second = actor.sample(obs, noise=noise)
    assert torch.equal(first, second)
    other = actor.sample(obs, noise=noise + 0.5)
    assert (other - first).abs().max().item() > 1e-4


def test_same_generator_seed_gives_same_actions():
    actor = _randomise(_actor())
    obs = _obs()
    a = actor.sample(obs, generator=torch.Generator().manual_seed(11))
    b = actor.sample(obs, generator=torch.Generator().manual_seed(11))
    c = actor.sample(obs, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_is_unnormalized_sample_normalized():
    actor = _randomise(_actor())
    obs = _obs()
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(4))
    a_n = actor.sample_normalized(obs, noise=noise)
    a = actor.sample(obs, noise=noise)
    # Box normalizer: a = a_n·(high − low)/2 + (high + low)/2.
    expected = a_n * torch.tensor([1.5, 1.25]) + torch.tensor([-0.5, 1.75])
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize(
    ("low", "high"),
    [
        (LOW, HIGH),
        (np.array([-1.0, -1.0], dtype=np.float32), np.array([1.0, 1.0], dtype=np.float32)),
        (np.array([-4.0, 0.25], dtype=np.float32), np.array([-3.0, 8.0], dtype=np.float32)),
        # Bounds whose affine map is inexact in float32: -1·0.125 + 0.225 = 0.099999994.
        (np.array([-0.3, 0.1], dtype=np.float32), np.array([0.7, 0.35], dtype=np.float32)),
    ],
)
def test_clip_keeps_actions_in_box(low, high):
    actor = _randomise(_actor(low, high))
    obs = _obs(64)
    # Large noise: a fresh flow barely moves it, so most actions start outside the box.
    noise = 5.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    unclipped = actor.sample(obs, noise=noise)
    low_t, high_t = torch.as_tensor(low), torch.as_tensor(high)
    outside = (unclipped < low_t) | (unclipped > high_t)
    assert outside.any()
    clipped = actor.sample(obs, noise=noise, clip=True)
    # clip=True clamps exactly to the env's box, not to its float32 image of [-1, 1].
    assert (clipped >= low_t).all()
    assert (clipped <= high_t).all()
    # Actions already inside the box are unchanged by clipping.
    inside = ~outside.any(dim=1)
    torch.testing.assert_close(clipped[inside], unclipped[inside])


@pytest.mark.parametrize("num_steps", [1, 4])
@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
@pytest.mark.parametrize("shortcut", [False, True])
def test_fresh_actor_is_identity_on_noise(num_steps, method, shortcut):
    actor = _actor(shortcut=shortcut)
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    out = actor.sample_normalized(_obs(6), num_steps, method, noise=z)
    assert torch.equal(out, z)
    # In env units the fresh actor returns the unnormalized noise.
    torch.testing.assert_close(
        actor.sample(_obs(6), num_steps, method, noise=z), actor.action_normalizer.unnormalize(z)
    )


def test_num_steps_and_method_change_a_trained_looking_flow():
    actor = _randomise(_actor(num_steps=8, method="euler"))
    obs = _obs()
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
    default = actor.sample_normalized(obs, noise=z)
    assert torch.equal(default, actor.sample_normalized(obs, 8, "euler", noise=z))
    assert not torch.equal(default, actor.sample_normalized(obs, 1, "euler", noise=z))
    assert not torch.equal(default, actor.sample_normalized(obs, 8, "heun", noise=z))


# ---------------------------------------------------------------------- shortcut step counts


def test_shortcut_num_steps_are_the_trained_step_sizes():
    # shortcut_loss trains d = 1/M and d = 2^-e, e = 0 … log2(M) − 1; K samples with d = 1/K.
    config = FlowActorConfig(obs_dim=3, action_dim=2, shortcut=True, shortcut_max_steps=8)
    assert config.shortcut_num_steps() == (1, 2, 4, 8)
    assert FlowActorConfig(obs_dim=3, action_dim=2, shortcut=True).shortcut_num_steps()[-1] == 128


@pytest.mark.parametrize("K", [3, 5, 6, 16])
def test_shortcut_actor_refuses_an_untrained_step_count(K):
    actor = _randomise(_actor(shortcut=True, shortcut_max_steps=8))
    obs = _obs()
    entry_points = [
        lambda: actor.velocity_fn(actor.normalize_obs(obs), K),
        lambda: actor.sample_normalized(obs, K),
        lambda: actor.sample(obs, K),
    ]
    for call in entry_points:
        with pytest.raises(ValueError, match=rf"K={K}\b.*\(1, 2, 4, 8\)"):
            call()
    # The default K comes from the config and is checked the same way.
    actor.config.num_steps = K
    with pytest.raises(ValueError, match=rf"K={K}\b"):
        actor.sample(obs)


def test_shortcut_actor_refusal_draws_no_random_numbers():
    actor = _actor(shortcut=True, shortcut_max_steps=8)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="K=3"):
        actor.sample(_obs(), 3, generator=generator)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(0).get_state())


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_shortcut_actor_samples_with_every_trained_step_count(K):
    actor = _randomise(_actor(shortcut=True, shortcut_max_steps=8))
    assert torch.isfinite(actor.sample(_obs(), K)).all()


def test_plain_actor_takes_any_step_count():
    actor = _randomise(_actor(shortcut_max_steps=8))
    assert torch.isfinite(actor.sample(_obs(), 3)).all()
    assert torch.isfinite(actor.sample(_obs(), 16)).all()


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("shortcut", [False, True])
def test_bc_loss_finite_with_gradient(shortcut):
    actor = _randomise(_actor(shortcut=shortcut, shortcut_max_steps=8))
    obs = _obs(16)
    actions = torch.as_tensor(np.random.default_rng(0).uniform(LOW, HIGH, size=(16, 2))).float()
    out = actor.bc_loss(obs, actions, generator=torch.Generator().manual_seed(0))
    expected_keys = {"loss", "flow_matching", "self_consistency"} if shortcut else {"loss"}
    assert set(out) == expected_keys
    loss = out["loss"]
    assert loss.shape == ()
    assert torch.isfinite(loss)
    assert loss.item() > 0
    assert loss.requires_grad
    loss.backward()
    grad = actor.velocity_net.output.weight.grad
    assert grad is not None and grad.abs().sum().item() > 0
    # The normalizers are buffers, not parameters: they are never trained.
    assert {n for n, _ in actor.named_parameters()} == {
        "velocity_net." + n for n, _ in actor.velocity_net.named_parameters()
    }
    if shortcut:
        for key in ("flow_matching", "self_consistency"):
            assert out[key].shape == ()
            assert torch.isfinite(out[key])
            assert not out[key].requires_grad
        # 16 rows, bootstrap fraction 0.25: 12 flow-matching rows and 4 bootstrap rows.
        total = (12 * out["flow_matching"] + 4 * out["self_consistency"]) / 16
        torch.testing.assert_close(loss.detach(), total)


def test_bc_loss_reproducible_with_generator():
    actor = _randomise(_actor())
    obs = _obs(8)
    actions = torch.zeros(8, 2)
    a = actor.bc_loss(obs, actions, generator=torch.Generator().manual_seed(5))["loss"]
    b = actor.bc_loss(obs, actions, generator=torch.Generator().manual_seed(5))["loss"]
    assert torch.equal(a, b)


def test_bc_loss_wrong_action_shape_raises():
    actor = _actor()
    with pytest.raises(ValueError, match=r"actions must have shape \(B, 2\)"):
        actor.bc_loss(_obs(4), torch.zeros(4, 3))


# ---------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("shortcut", [False, True])
def test_save_load_round_trip(tmp_path, shortcut):
    actor = _randomise(_actor(shortcut=shortcut, num_steps=4, method="midpoint"))
    path = tmp_path / "nested" / "dir" / "actor.pt"
    actor.save(path)
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["actor.pt"]  # no .tmp left
    loaded = FlowActor.load(path)
    assert loaded.config == actor.config
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(actor.config)
    for name in ("obs_normalizer", "action_normalizer"):
        for buf in ("shift", "scale"):
            assert torch.equal(
                getattr(getattr(loaded, name), buf), getattr(getattr(actor, name), buf)
            )
    obs = _obs(6)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(loaded.sample(obs, noise=noise), actor.sample(obs, noise=noise))
    assert not torch.equal(actor.sample(obs, noise=noise), actor.action_normalizer(noise))
    state, loaded_state = actor.state_dict(), loaded.state_dict()
    assert list(state) == list(loaded_state)
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)


def test_save_overwrites(tmp_path):
    path = tmp_path / "actor.pt"
    _actor().save(path)
    actor = _randomise(_actor(), seed=4)
    actor.save(path)
    loaded = FlowActor.load(str(path))
    assert torch.equal(loaded.velocity_net.output.weight, actor.velocity_net.output.weight.detach())


def test_checkpoint_of_another_class_raises(tmp_path):
    ckpt = _actor().checkpoint()
    assert ckpt["class"] == "FlowActor"
    ckpt["class"] = "CriticNet"
    path = tmp_path / "critic.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="CriticNet") as info:
        FlowActor.load(path)
    assert "FlowActor" in str(info.value)


def test_checkpoint_of_other_format_raises(tmp_path):
    ckpt = _actor().checkpoint()
    ckpt["format"] = 999
    path = tmp_path / "future.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="format 999"):
        FlowActor.load(path)


def test_plain_torch_file_raises(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError, match="not a flowrl checkpoint"):
        FlowActor.load(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(
        ValueError, match="plain.pt' is not a FlowActor checkpoint: it holds a Tensor"
    ):
        FlowActor.load(path)


def test_random_bytes_raise(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(
        ValueError, match="junk.pt' is not a FlowActor checkpoint: it is damaged, or holds pickled"
    ):
        FlowActor.load(path)


@pytest.mark.parametrize("damage", ["missing tensor", "wrong shape", "bad config"])
def test_damaged_checkpoint_contents_raise_naming_the_file(tmp_path, damage):
    ckpt = _actor().checkpoint()
    if damage == "missing tensor":
        del ckpt["state_dict"]["velocity_net.output.weight"]
    elif damage == "wrong shape":
        ckpt["state_dict"]["velocity_net.output.weight"] = torch.zeros(3, 3)
    else:
        ckpt["config"]["num_steps"] = 0
    path = tmp_path / "damaged.pt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"checkpoint '.*damaged\.pt'"):
        FlowActor.load(path)


def test_missing_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FlowActor checkpoint at .*missing.pt"):
        FlowActor.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- input checks


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_observations_raise(bad):
    actor = _actor()
    obs = _obs(4)
    obs[2, 1] = bad
    with pytest.raises(ValueError, match="NaN"):
        actor.sample(obs)
    with pytest.raises(ValueError, match="NaN"):
        actor.bc_loss(obs, torch.zeros(4, 2))


@pytest.mark.parametrize("shape", [(4, 2), (4, 4), (3,), (4, 3, 1)])
def test_wrong_obs_shape_raises(shape):
    actor = _actor()
    with pytest.raises(ValueError, match=r"observations must have shape \(B, 3\)"):
        actor.sample(torch.zeros(shape))


def test_mismatched_normalizers_raise():
    config = FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1)
    with pytest.raises(ValueError, match="obs normalizer has dim 4"):
        FlowActor(config, Normalizer.identity(4), Normalizer.identity(2))
    with pytest.raises(ValueError, match="action normalizer has dim 3"):
        FlowActor(config, Normalizer.identity(3), Normalizer.identity(3))


def test_default_normalizers_are_identity():
    actor = FlowActor(FlowActorConfig(obs_dim=3, action_dim=2, width=16, depth=1))
    assert actor.obs_normalizer.dim == 3 and actor.action_normalizer.dim == 2
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(actor.sample(torch.zeros(4, 3), noise=z), z)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"obs_dim": -1, "action_dim": 2},
        {"obs_dim": 3, "action_dim": 0},
        {"obs_dim": 3, "action_dim": 2, "method": "rk4"},
        {"obs_dim": 3, "action_dim": 2, "num_steps": 0},
        {"obs_dim": 3, "action_dim": 2, "shortcut": True, "shortcut_max_steps": 6},
        {"obs_dim": 3, "action_dim": 2, "shortcut": True, "shortcut_max_steps": 1},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        FlowActorConfig(**kwargs)


# ---------------------------------------------------------------------- unconditional


def test_unconditional_actor(tmp_path):
    config = FlowActorConfig(obs_dim=0, action_dim=2, width=16, depth=1)
    actor = _randomise(FlowActor(config, action_normalizer=Normalizer.box(LOW, HIGH)))
    assert actor.velocity_net.cond_dim == 0
    obs = torch.zeros(5, 0)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    actions = actor.sample(obs, noise=z)
    assert actions.shape == (5, 2)
    assert torch.isfinite(actions).all()
    assert actor.sample(obs).shape == (5, 2)
    loss = actor.bc_loss(torch.zeros(8, 0), torch.zeros(8, 2))["loss"]
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"\(B, 0\)"):
        actor.sample(torch.zeros(5, 1))
    path = tmp_path / "uncond.pt"
    actor.save(path)
    loaded = FlowActor.load(path)
    assert loaded.config.obs_dim == 0
    assert torch.equal(loaded.sample(obs, noise=z), actions)
