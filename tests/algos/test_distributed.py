"""Data-parallel on-policy learning on 2 CPU ranks (gloo), as ``torchrun`` would start them.

Each test spawns its ranks once (``ranks.run_ranks``, ~2 s) and checks several things in them:
the copies stay bit-identical, the averaged gradient is the gradient of the union of the
ranks' rollouts, collective decisions stop every rank, rank 0 alone writes, checkpoints move
between distributed and single-process runs, and bad input or a dead rank ends in a clear
error on every rank instead of a hang.
"""

import dataclasses
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from learner_helpers import LEARNERS
from ranks import StopAt, ok_results, run_ranks
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import flowrl.distributed as fd
from flowrl.algos import ReinFlow

OBS = np.random.default_rng(7).normal(size=(6, 3)).astype(np.float32)


def _venv(n_envs: int = 2, norm: bool = False):
    venv = DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=16)] * n_envs)
    return VecNormalize(venv, norm_obs=True, norm_reward=True) if norm else venv


def _model(name: str = "reinflow", *, n_envs: int = 2, norm: bool = False, **kwargs):
    spec = LEARNERS[name]
    algo = dict(n_steps=8, batch_size=8, n_epochs=2, seed=3, learning_rate=1e-3, device="cpu")
    algo.update(spec.algo_kwargs)
    algo.update(kwargs)
    return spec.cls(spec.alias, _venv(n_envs, norm), policy_kwargs=spec.policy_kwargs(2), **algo)


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


class _Files(BaseCallback):
    """A callback that writes one file per rollout, named after its rank."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        Path(self.folder, f"callback_rank{fd.rank()}_{self.num_timesteps}").touch()


# ---------------------------------------------------------------------- in the ranks


def _learn_all(rank: int, folder: str, single: str) -> dict:
    """Every learner learns 3 updates; ReinFlow also logs, saves, stops by callback, loads."""
    out: dict = {"params": {}}
    for name in LEARNERS:
        model = _model(name)
        model.learn(3 * 8 * 2 * 2)
        out["params"][name] = _flat(model.policy)
        out.setdefault("timesteps", {})[name] = model.num_timesteps
    model = _model(norm=True, tensorboard_log=str(Path(folder, "tb")))
    model.learn(3 * 8 * 2 * 2, callback=_Files(folder))
    model.save(Path(folder, "model.zip"))
    venv = model.get_vec_normalize_env()
    out["rms"] = (venv.obs_rms.mean, venv.obs_rms.var, venv.obs_rms.count, venv.ret_rms.var)
    out["rank0_actions"] = model.predict(OBS, deterministic=True)[0]
    out["reinflow"] = _flat(model.policy)
    # rank 0's callback stops training after 5 steps: every rank stops with it
    stopper = _model()
    stopper.learn(10 * 8 * 2 * 2, callback=StopAt(5))
    out["stopped_at"] = stopper.num_timesteps
    # a single-process checkpoint, loaded on both ranks, acts as it did and trains on
    loaded = ReinFlow.load(single, env=_venv(), device="cpu")
    out["single_actions"] = loaded.predict(OBS, deterministic=True)[0]
    loaded.learn(8 * 2 * 2, reset_num_timesteps=False)
    out["single_after"] = _flat(loaded.policy)
    out["single_timesteps"] = loaded.num_timesteps
    return out


def _one_update(rank: int) -> dict:
    """One update, one epoch, one global minibatch (both ranks' whole rollouts)."""
    model = _model(n_epochs=1, batch_size=32, max_grad_norm=1e9, normalize_advantage=True)
    from learner_helpers import rollout

    rollout(model)  # broadcasts rank 0's weights, then collects this rank's rollout
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.train()
    batch = next(model.rollout_buffer.get(None, np.arange(16)))
    grads = [
        None if p.grad is None else p.grad.clone()
        for opt in model._optimizers()
        for g in opt.param_groups
        for p in g["params"]
    ]
    return {"before": before, "batch": batch, "grads": grads}


def _collective_decisions(rank: int) -> dict:
    """A KL stop and a NaN on rank 1 alone decide for both ranks; neither hangs."""
    out = {}
    model = _model(n_epochs=4, target_kl=0.01)
    if rank == 1:
        actor_loss = model._actor_loss

        def huge_kl(*args, **kwargs):
            loss, values, _, ratio = actor_loss(*args, **kwargs)
            return loss, values, 1.0, ratio

        model._actor_loss = huge_kl
    model.learn(8 * 2 * 2)
    out["n_updates"] = model._n_updates  # epochs run: 1 on both ranks (mean KL 0.5 > 0.015)
    model = _model()
    if rank == 1:
        actor_loss = model._actor_loss

        def nan_loss(*args, **kwargs):
            loss, values, kl, ratio = actor_loss(*args, **kwargs)
            return loss * float("nan"), values, kl, ratio

        model._actor_loss = nan_loss
    try:
        model.learn(8 * 2 * 2)
        out["nan"] = "no error"
    except FloatingPointError as err:
        out["nan"] = str(err)
    return out


def _bad_batch(rank: int) -> None:
    _model(batch_size=7)


def _dies(rank: int) -> None:
    model = _model()
    if rank == 1:
        step = model.env.step

        def die(actions):
            if model.num_timesteps >= 2 * 8 * 2 * 2:
                os._exit(3)  # killed mid-run: no error message, no clean shutdown
            return step(actions)

        model.env.step = die
    model.learn(6 * 8 * 2 * 2)


def _alone_on_main(rank: int) -> object:
    """Inside on_main rank 0 is a single process: a learner there trains alone."""

    def alone():
        model = _model()
        model.learn(8 * 2)
        return fd.is_distributed(), fd.world_size(), model.num_timesteps

    return fd.on_main(alone, "a learner on rank 0 alone"), fd.is_distributed()


def _merge_stats(rank: int) -> tuple:
    stats = RunningMeanStd(shape=(2,))
    holder = type("V", (), {"norm_obs": True, "norm_reward": False, "obs_rms": stats})()
    fd.share_vec_normalize(holder)
    for part in range(3):  # three merges: earlier data is not counted twice
        stats.update(np.random.default_rng(10 * part + rank).normal(size=(50, 2)) * (rank + 1))
        fd.sync_vec_normalize(holder)
    return stats.mean, stats.var, stats.count


# ---------------------------------------------------------------------- the tests


def test_ranks_stay_identical_log_once_and_checkpoints_move(tmp_path):
    single = _model()
    single.learn(8 * 2 * 2)
    single.save(tmp_path / "single.zip")
    single_actions = single.predict(OBS, deterministic=True)[0]
    folder = tmp_path / "run"
    folder.mkdir()
    r0, r1 = ok_results(
        run_ranks(_learn_all, 2, str(folder), str(tmp_path / "single.zip"), timeout_s=240)
    )
    for name in LEARNERS:  # bit-identical copies after 3 updates, for every learner
        assert torch.equal(r0["params"][name], r1["params"][name]), name
        assert r0["timesteps"][name] == r1["timesteps"][name] == 3 * 8 * 2 * 2
    assert torch.equal(r0["reinflow"], r1["reinflow"])
    for a, b in zip(r0["rms"], r1["rms"], strict=True):  # VecNormalize merged
        np.testing.assert_array_equal(a, b)
    # the obs statistics count both ranks' steps (+ the initial reset of each rank's 2 envs)
    assert r0["rms"][2] == pytest.approx(2 * (3 * 8 * 2 + 2), abs=1)
    # rank 0 alone wrote: its callback's files, one TensorBoard run, the model
    written = sorted(p.name for p in folder.iterdir())
    assert written == [
        "callback_rank0_32",
        "callback_rank0_64",
        "callback_rank0_96",
        "model.zip",
        "tb",
    ]
    assert [p.name for p in (folder / "tb").iterdir()] == ["ReinFlow_1"]
    # the 2-rank checkpoint acts in one process as rank 0 did
    loaded = ReinFlow.load(folder / "model.zip", env=_venv(), device="cpu")
    np.testing.assert_array_equal(loaded.predict(OBS, deterministic=True)[0], r0["rank0_actions"])
    assert torch.equal(_flat(loaded.policy), r0["reinflow"])
    # rank 0's callback stopped both ranks in their first rollout; both count all steps
    # taken (rank 0: 5 of its 2 envs before stopping, rank 1: its whole rollout of 8)
    assert r0["stopped_at"] == r1["stopped_at"] == 5 * 2 + 8 * 2
    # the single-process checkpoint acted alike on both ranks and trained on in step
    np.testing.assert_array_equal(r0["single_actions"], single_actions)
    np.testing.assert_array_equal(r1["single_actions"], single_actions)
    assert torch.equal(r0["single_after"], r1["single_after"])
    assert r0["single_timesteps"] == 2 * 8 * 2 * 2


def test_averaged_gradient_is_the_gradient_of_the_union():
    r0, r1 = ok_results(run_ranks(_one_update, 2))
    for key in r0["before"]:  # both ranks started from rank 0's weights
        assert torch.equal(r0["before"][key], r1["before"][key]), key
    for g0, g1 in zip(r0["grads"], r1["grads"], strict=True):
        assert (g0 is None) == (g1 is None)
        if g0 is not None:
            assert torch.equal(g0, g1)
    # one process, the same weights, the union of both ranks' rollouts as one minibatch
    model = _model(n_envs=4, n_epochs=1, batch_size=32, max_grad_norm=1e9, normalize_advantage=True)
    model.policy.load_state_dict(r0["before"])
    b0, b1 = r0["batch"], r1["batch"]
    union = dataclasses.replace(
        b0,
        **{
            f.name: torch.cat([getattr(b0, f.name), getattr(b1, f.name)])
            for f in dataclasses.fields(b0)
            if f.name != "fields"
        },
        fields={k: torch.cat([b0.fields[k], b1.fields[k]]) for k in b0.fields},
    )

    def gradient(batches):
        model.policy.set_training_mode(True)
        for opt in model._optimizers():
            opt.zero_grad(set_to_none=True)
        for batch in batches:
            loss, values, _, _ = model._actor_loss(batch, 0.2, {k: [] for k in STATS})
            value_loss = torch.nn.functional.mse_loss(batch.returns, values)
            ((loss + model.vf_coef * value_loss) / len(batches)).backward()
        return [
            None if p.grad is None else p.grad.clone()
            for opt in model._optimizers()
            for g in opt.param_groups
            for p in g["params"]
        ]

    expected = gradient([union])
    for got, want in zip(r0["grads"], expected, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    # the check is sharp: normalizing each rank's advantages on its own gives another gradient
    per_rank = gradient([r0["batch"], r1["batch"]])
    diff = max(
        float((a - b).abs().max()) for a, b in zip(per_rank, expected, strict=True) if a is not None
    )
    assert diff > 1e-3


STATS = (
    "pg",
    "value",
    "entropy",
    "bc",
    "clip",
    "kl",
    "ratio",
    "neg_log_prob",
    "cov",
    "cov_max",
    "selected",
)


def test_kl_stop_and_nan_on_one_rank_stop_every_rank():
    r0, r1 = ok_results(run_ranks(_collective_decisions, 2))
    assert r0["n_updates"] == r1["n_updates"] == 1
    for r in (r0, r1):
        assert r["nan"].startswith("ReinFlow loss is not finite on some rank"), r["nan"]


def test_world_size_that_does_not_divide_the_batch_fails_on_every_rank():
    out = run_ranks(_bad_batch, 2, timeout_s=60)
    for rank in (0, 1):
        status, (kind, message, _) = out[rank]
        assert status == "error" and kind == "ValueError"
        assert "not divisible by the world size 2" in message


def test_a_dead_rank_is_a_clear_error_on_the_others():
    out = run_ranks(_dies, 2, timeout_s=90, group_timeout_s=30)
    assert out[1] == ("died", 3)
    status, (kind, message, _) = out[0]
    assert status == "error" and kind == "DistributedError", out[0]
    assert "rank 0 of 2" in message and "another rank stopped" in message


def test_on_main_runs_a_learner_on_rank_0_alone():
    for result in ok_results(run_ranks(_alone_on_main, 2)):
        # rank 0 alone: no group inside, 16 steps of its own 2 envs; the group is back after
        assert result == ((False, 1, 16), True)


def test_vecnormalize_statistics_merge_as_one_process_would():
    r0, r1 = ok_results(run_ranks(_merge_stats, 2))
    for a, b in zip(r0, r1, strict=True):
        np.testing.assert_array_equal(a, b)
    whole = RunningMeanStd(shape=(2,))
    for part in range(3):
        for rank in range(2):
            whole.update(np.random.default_rng(10 * part + rank).normal(size=(50, 2)) * (rank + 1))
    np.testing.assert_allclose(r0[0], whole.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(r0[1], whole.var, rtol=1e-10)
    assert r0[2] == pytest.approx(whole.count)


def test_single_process_is_unchanged_by_the_helpers():
    assert not fd.is_distributed() and fd.is_main() and fd.world_size() == 1
    assert fd.rank_seed(5, 4) == 5 and fd.rank_seed(None) is None
    assert fd.agree(True) and not fd.agree(False)
    sync = fd.GradientSync([torch.nn.Parameter(torch.ones(2))])
    assert sync([1.5, 2.0]).tolist() == [1.5, 2.0]
    assert fd.init() is False  # not started by torchrun: nothing to join
