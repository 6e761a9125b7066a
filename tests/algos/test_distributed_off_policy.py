"""Data-parallel replay-buffer learning (FlowSAC, EDP) on 2 CPU ranks (gloo), as ``torchrun``
would start them.

Each test spawns its ranks once (``ranks.run_ranks``, ~2 s) and checks several things in them:
the copies (targets and log α included) stay bit-identical, ``num_timesteps`` and
``gradient_steps=-1`` count every rank's steps, an averaged gradient step is the step of one
process on the union of the ranks' minibatches, a NaN on one rank or a callback's stop on
rank 0 stops every rank, rank 0 alone writes and its checkpoint loads in one process, and
settings the ranks cannot split (or learners that do not train data-parallel) are refused on
every rank.
"""

import zlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from ranks import StopAt, ok_results, run_ranks
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import flowrl.distributed as fd
from flowrl.algos import DSRL, EDP, EDPExplore, EDPExploreFlow, FlowSAC

OBS = np.random.default_rng(7).normal(size=(6, 3)).astype(np.float32)
ENVS = 2  # per rank
WORLD = 2


def _venv(n_envs: int = ENVS, norm: bool = False):
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=20)] * n_envs)
    return VecNormalize(venv, norm_obs=True, norm_reward=True) if norm else venv


def _flowsac(n_envs: int = ENVS, norm: bool = False, **kwargs) -> FlowSAC:
    algo = dict(learning_starts=16, batch_size=8, buffer_size=1000, seed=3, device="cpu")
    algo.update(kwargs)
    return FlowSAC(
        "FlowSACPolicy",
        _venv(n_envs, norm),
        policy_kwargs=dict(
            num_steps=2,
            actor_config=dict(width=16, depth=1),
            noise_hidden=(8,),
            value_hidden=(16, 16),
        ),
        **algo,
    )


def _edp(n_envs: int = ENVS, **kwargs) -> EDP:
    algo = dict(learning_starts=16, batch_size=8, buffer_size=1000, seed=3, device="cpu")
    algo.update(kwargs)
    return EDP(
        "EDPPolicy",
        _venv(n_envs),
        policy_kwargs=dict(num_steps=2, actor_config=dict(width=16, depth=1), value_hidden=(16,)),
        num_candidates=2,
        **algo,
    )


def _optimizers(model) -> list[torch.optim.Optimizer]:
    opts = [model.policy.optimizer, model.policy.critic_optimizer]
    return [*opts, model.ent_coef_optimizer] if getattr(model, "ent_coef_optimizer", None) else opts


def _params(model) -> list[torch.Tensor]:
    return [p for opt in _optimizers(model) for g in opt.param_groups for p in g["params"]]


def _grads(model) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.detach().clone() for p in _params(model)]


def _everything(model) -> dict[str, torch.Tensor]:
    """Weights (targets, reference flow and buffers included), log α and optimizer states."""
    out = {f"policy.{k}": v.detach().clone() for k, v in model.policy.state_dict().items()}
    if getattr(model, "log_ent_coef", None) is not None:
        out["log_ent_coef"] = model.log_ent_coef.detach().clone()
    for i, opt in enumerate(_optimizers(model)):
        for pid, slots in opt.state_dict()["state"].items():
            for name, value in slots.items():
                out[f"opt{i}.{pid}.{name}"] = torch.as_tensor(value).clone()
    return out


class _Files(BaseCallback):
    """Writes a file named after its rank when training ends; records the counts it saw."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder
        self.seen: list[int] = []

    def _on_step(self) -> bool:
        self.seen.append(self.num_timesteps)
        return True

    def _on_training_end(self) -> None:
        Path(self.folder, f"callback_rank{fd.rank()}").touch()


def _row_key(row: torch.Tensor) -> int:
    return zlib.crc32(row.detach().cpu().numpy().tobytes())


def _keyed(fn, combine):
    """``fn`` applied row by row, each row's randomness seeded by the row's bytes.

    Every row then draws the same noise whichever process, batch or position holds it, so a
    rank's minibatch and the union of the ranks' minibatches see the same noise per row.
    """

    def wrapper(obs, *args, **kwargs):
        parts = []
        for row in obs:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_row_key(row))
                parts.append(fn(row[None], *args, **kwargs))
        return combine(parts)

    return wrapper


def _keyed_noise(model) -> None:
    """Row-keyed noise in every random draw of the model's gradient step."""
    if isinstance(model, FlowSAC):
        model.policy.action_log_prob = _keyed(
            model.policy.action_log_prob,
            lambda parts: tuple(map(torch.cat, zip(*parts, strict=True))),
        )
    else:  # EDP: the critics' losses draw nothing; the distillation's loss is a mean over states
        model.distillation_loss = _keyed(
            model.distillation_loss,
            lambda parts: (torch.stack([p[0] for p in parts]).mean(), parts[0][1]),
        )


# ---------------------------------------------------------------------- in the ranks


def _learn_and_write(rank: int, folder: str) -> dict:
    """FlowSAC (VecNormalize, logs, callback, save), EDP (gradient_steps=-1), a stop."""
    out: dict = {}
    steps = 50  # vectorized steps per rank
    model = _flowsac(norm=True, tensorboard_log=str(Path(folder, "tb")))
    files = _Files(folder)
    model.learn(steps * ENVS * WORLD, callback=files)
    model.save(Path(folder, "flowsac.zip"))
    venv = model.get_vec_normalize_env()
    out["flowsac"] = _everything(model)
    out["flowsac_timesteps"] = model.num_timesteps
    out["flowsac_updates"] = model._n_updates
    out["seen"] = files.seen[:4]
    out["replay"] = (model.replay_buffer.pos, model.replay_buffer.buffer_size)
    out["rms"] = (venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count, venv.ret_rms.var)
    out["actions"] = model.predict(OBS, deterministic=True)[0]
    # gradient_steps=-1: as many gradient steps as all ranks' env steps of the rollout
    edp = _edp(train_freq=2, gradient_steps=-1)
    edp.learn(96)
    out["edp"] = _everything(edp)
    out["edp_timesteps"] = edp.num_timesteps
    out["edp_updates"] = edp._n_updates
    # rank 0's callback stops at its 6th step (the 2nd of the 2nd rollout): all ranks stop
    stopper = _flowsac(train_freq=4, learning_starts=8)
    stopper.learn(1000, callback=StopAt(6))
    out["stopped_at"] = stopper.num_timesteps
    out["stopper"] = _everything(stopper)
    return out


def _one_step(rank: int) -> dict:
    """One gradient step of FlowSAC and EDP on row-keyed noise: its data and gradients."""
    out = {}
    for name, make in (("flowsac", _flowsac), ("edp", _edp)):
        # 4 rollouts of 4 env steps (all ranks); one train call, after the last
        model = make(learning_starts=12, batch_size=16, max_grad_norm=None)
        got: dict = {}
        sample, train, average = model.replay_buffer.sample, model.train, model._average_gradients

        def capture_sample(n, env=None, sample=sample, got=got):
            got["data"] = sample(n, env=env)
            return got["data"]

        def capture_train(gradient_steps, batch_size, model=model, train=train, got=got):
            got["before"] = _everything(model)
            _keyed_noise(model)
            train(gradient_steps, batch_size)

        def capture_local(sync, losses, model=model, average=average, got=got):
            got["local"] = _grads(model)  # before the all-reduce
            average(sync, losses)

        model.replay_buffer.sample = capture_sample
        model.train = capture_train
        model._average_gradients = capture_local
        model.learn(16)
        got["grads"] = _grads(model)
        got["updates"] = model._n_updates
        out[name] = got
    return out


def _refusals(rank: int) -> dict:
    """A NaN on rank 1 alone; settings the ranks cannot split; learners that refuse."""
    out = {}
    for name, make in (("flowsac", _flowsac), ("edp", _edp)):
        model = make()
        if rank == 1:
            sample = model.replay_buffer.sample

            def nan_rewards(n, env=None, sample=sample):
                data = sample(n, env=env)
                return data._replace(rewards=data.rewards * float("nan"))

            model.replay_buffer.sample = nan_rewards
        got: dict = {}
        train = model.train

        def snapshot(gradient_steps, batch_size, model=model, train=train, got=got):
            got["before"] = _everything(model)
            train(gradient_steps, batch_size)

        model.train = snapshot
        try:
            model.learn(40)
            out[name] = ("no error", None)
        except FloatingPointError as err:  # at the first gradient step: nothing was applied
            after = _everything(model)
            out[name] = (str(err), all(torch.equal(got["before"][k], v) for k, v in after.items()))
    for name, make in (
        ("batch", lambda: _flowsac(batch_size=7)),
        ("edp_batch", lambda: _edp(batch_size=9)),
        ("distill", lambda: _edp(batch_size=8, distill_batch_size=5)),
        ("episodes", lambda: _flowsac(n_envs=1, train_freq=(1, "episode"))),
        ("dsrl", lambda: DSRL("MlpPolicy", "Pendulum-v1")),
        ("explore", lambda: EDPExplore("MlpPolicy", "Pendulum-v1")),
        ("explore_flow", lambda: EDPExploreFlow("FlowSACPolicy", "Pendulum-v1")),
    ):
        try:
            make()
            out[name] = "no error"
        except ValueError as err:
            out[name] = str(err)
    out["distill_ok"] = _edp(batch_size=8, distill_batch_size=64).distill_batch_size
    return out


def _short_runs(rank: int) -> dict:
    return {"one_step": _one_step(rank), "refusals": _refusals(rank)}


# ---------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def short_runs() -> list[dict]:
    """The ranks' results of the short runs (one spawn for the tests that read them)."""
    return ok_results(run_ranks(_short_runs, WORLD, timeout_s=180))


def test_ranks_stay_identical_count_every_step_and_rank_0_alone_writes(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    r0, r1 = ok_results(run_ranks(_learn_and_write, WORLD, str(folder), timeout_s=240))
    for key in ("flowsac", "edp", "stopper"):  # weights, targets, log α, Adam: bit-identical
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)
    assert any(k.startswith("policy.critic_target") for k in r0["flowsac"])
    assert "log_ent_coef" in r0["flowsac"]
    # num_timesteps counts both ranks' steps, during the rollout too (the callback's view)
    assert r0["flowsac_timesteps"] == r1["flowsac_timesteps"] == 50 * ENVS * WORLD
    assert r0["seen"] == [4, 8, 12, 16]
    # a train call per vectorized step once num_timesteps > learning_starts (16): 46 of 50
    assert r0["flowsac_updates"] == r1["flowsac_updates"] == 46
    # each rank's own buffer: its 50 steps of 2 envs, a capacity of buffer_size / 2
    assert r0["replay"] == r1["replay"] == (50, 1000 // WORLD // ENVS)
    for a, b in zip(r0["rms"], r1["rms"], strict=True):  # VecNormalize merged
        np.testing.assert_array_equal(a, b)
    assert r0["rms"][2] == pytest.approx(WORLD * (50 * ENVS + ENVS), abs=1)
    # gradient_steps=-1: 8 gradient steps (2 steps x 2 envs x 2 ranks) per train call, one
    # call per rollout from num_timesteps 24 to 96: what one process of 4 envs would take
    assert r0["edp_timesteps"] == r1["edp_timesteps"] == 96
    assert r0["edp_updates"] == r1["edp_updates"] == 10 * 8
    # rank 0 stopped at its 2nd step of the 2nd rollout (of 4 steps): every rank stops,
    # counting 16 steps of the 1st rollout + rank 0's 2 x 2 + rank 1's 4 x 2
    assert r0["stopped_at"] == r1["stopped_at"] == 16 + 2 * ENVS + 4 * ENVS
    # rank 0 alone wrote: its callback's file, one TensorBoard run, the model
    assert sorted(p.name for p in folder.iterdir()) == ["callback_rank0", "flowsac.zip", "tb"]
    assert [p.name for p in (folder / "tb").iterdir()] == ["FlowSAC_1"]
    # the 2-rank checkpoint acts in one process as rank 0 did, with rank 0's weights
    loaded = FlowSAC.load(folder / "flowsac.zip", env=_venv(), device="cpu")
    np.testing.assert_array_equal(loaded.predict(OBS, deterministic=True)[0], r0["actions"])
    for name, value in loaded.policy.state_dict().items():
        assert torch.equal(value, r0["flowsac"][f"policy.{name}"]), name
    assert torch.equal(loaded.log_ent_coef.detach(), r0["flowsac"]["log_ent_coef"])


def _union(d0, d1):
    return type(d0)(
        *(None if a is None else torch.cat([a, b]) for a, b in zip(d0, d1, strict=True))
    )


def test_a_gradient_step_is_the_step_of_one_process_on_the_union(short_runs):
    for name in ("flowsac", "edp"):
        _check_union(name, *(r["one_step"][name] for r in short_runs))


def _check_union(name: str, r0: dict, r1: dict) -> None:
    assert r0["updates"] == r1["updates"] == 1
    for k in r0["before"]:  # both ranks started from rank 0's weights
        assert torch.equal(r0["before"][k], r1["before"][k]), k
    for g0, g1 in zip(r0["grads"], r1["grads"], strict=True):  # the same averaged gradients
        assert (g0 is None) == (g1 is None)
        assert g0 is None or torch.equal(g0, g1)
    assert len(r0["data"].observations) == 8  # each rank's half of the global 16
    # one process: the same weights, the same noise per row, the union of both minibatches
    model = _flowsac(batch_size=16) if name == "flowsac" else _edp(batch_size=16)
    model.policy.load_state_dict({k[7:]: v for k, v in r0["before"].items() if k[:7] == "policy."})
    if name == "flowsac":
        with torch.no_grad():
            model.log_ent_coef.copy_(r0["before"]["log_ent_coef"])
    union = _union(r0["data"], r1["data"])
    model.replay_buffer.sample = lambda n, env=None: union
    model.set_logger(Logger(folder=None, output_formats=[]))
    _keyed_noise(model)
    model.train(1, 16)
    expected = _grads(model)
    assert sum(g is not None for g in expected) == len(expected)  # actor, critics (and α) too
    for got, want in zip(r0["grads"], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    # the check is sharp: a rank's own gradient is not the union's
    diff = max(
        float((a - b).abs().max() / (b.abs().max() + 1e-12))
        for a, b in zip(r0["local"], expected, strict=True)
    )
    assert diff > 1e-3


def test_nan_on_one_rank_and_settings_the_ranks_cannot_split_fail_on_every_rank(short_runs):
    for r in (run["refusals"] for run in short_runs):
        for name, learner in (("flowsac", "FlowSAC"), ("edp", "EDP")):
            message, unchanged = r[name]
            assert message.startswith(f"{learner} loss is not finite on some rank"), message
            assert "critic" in message or "q;" in message
            assert unchanged is True
        assert "not divisible by the world size 2" in r["batch"]
        assert "not divisible by the world size 2" in r["edp_batch"]
        assert "distill_batch_size=5" in r["distill"] and "world size 2" in r["distill"]
        assert "counts episodes" in r["episodes"]
        assert r["dsrl"].startswith("DSRL does not train data-parallel; launch it without")
        assert r["explore"].startswith("EDPExplore does not train data-parallel")
        assert r["explore_flow"].startswith("EDPExploreFlow does not train data-parallel")
        assert r["distill_ok"] == 64  # larger than the batch: the whole batch, split
