"""FlowBC on 2 gloo CPU ranks: identical copies, averaged gradients, rank-0 files, resume."""

import glob
import importlib

import numpy as np
import torch
from ranks import ok_results, run_ranks

from flowrl import distributed
from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.data.datasets import OfflineDataset
from flowrl.data.normalizers import Normalizer
from flowrl.data.toy import mixture_dataset
from flowrl.flow.losses import flow_matching_loss
from flowrl.policies.flow_actor import FlowActor, FlowActorConfig

KIND = "4gaussians"
WORLD = 2


def _data():
    return mixture_dataset(KIND, 512, seed=0)


def _config(**overrides):
    fields = dict(steps=6, batch_size=16, seed=0, log_interval=2, ema_decay=0.9)
    return BCConfig(**{**fields, **overrides})


def _actor(seed):
    """A small actor whose initial weights depend on ``seed``."""
    data = _data()
    torch.manual_seed(seed)
    cfg = FlowActorConfig(obs_dim=data.obs_dim, action_dim=data.action_dim, width=16, depth=1)
    return FlowActor(
        cfg, Normalizer.gaussian(data.observations), Normalizer.from_data_range(data.actions)
    )


def _samples(actor):
    with torch.no_grad():
        return actor.sample(torch.zeros(64, 1), generator=torch.Generator().manual_seed(7))


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- run on each rank


def _train_save_resume(rank, tmp, single_ckpt):
    """Train on 2 ranks, save, resume a single process's checkpoint; report what each saw."""
    data = _data()
    bc = FlowBC(_actor(seed=100 + rank), data, _config())  # rank 1 starts elsewhere...
    initial = _state(bc.actor)  # ...and gets rank 0's weights
    initial_ema = _state(bc.ema.shadow)
    before = bc.generator.get_state()
    first_batch = bc.batch()[1].clone()
    bc.generator.set_state(before)
    out = tmp / "run"  # the same paths on every rank: rank 0 alone writes
    bc.learn(
        tensorboard_log=out / "tb",
        checkpoint_path=out / "bc.ckpt",
        checkpoint_interval=3,
        progress_bar=True,
    )
    bc.save_checkpoint(tmp / f"rank{rank}.ckpt")  # a no-op on rank 1
    trained = {
        "actor": _state(bc.actor),
        "ema": _state(bc.ema.shadow),
        "losses": list(bc.losses),
        "samples": _samples(bc.actor_ema),
        "generator": bc.generator.get_state(),
    }
    # A single process's checkpoint resumed by both ranks.
    resumed = FlowBC.load_checkpoint(single_ckpt, data)
    loaded = {"step": resumed.step, "generator": resumed.generator.get_state()}
    resumed.learn(5, progress_bar=False)
    # The pipeline's bc stage, called by both ranks: rank 0 alone claims and writes the folder.
    pretrain = importlib.import_module("flowrl.experiments.pretrain")
    stage = pretrain.BCStageConfig(
        actor={"width": 16, "depth": 1, "num_steps": 2}, train=BCConfig(steps=4, batch_size=16)
    )
    path = pretrain.behaviour_clone(stage, tmp / "pendulum.npz", "Pendulum-v1", tmp / "bc", False)
    return {
        "bc_stage": (str(path), path.is_file()),  # bc.pt is there when any rank returns
        "initial": initial,
        "initial_ema": initial_ema,
        "first_batch": first_batch,
        "trained": trained,
        "loaded": loaded,
        "resumed": {"actor": _state(resumed.actor), "ema": _state(resumed.ema.shadow)},
    }


class FixedBC(FlowBC):
    """FlowBC on given rows, flow times and noise: one step is a known function of them."""

    rows: tuple = ()

    def batch(self):
        return self.rows[0], self.rows[1]

    def loss(self, obs, actions):
        obs_n = self.actor.normalize_obs(obs)
        data = self.actor.action_normalizer.normalize(actions)
        velocity = lambda tt, x: self.actor.velocity(tt, x, obs_n)  # noqa: E731
        return {"loss": flow_matching_loss(velocity, data, self.rows[2], self.rows[3])}


def _fixed_rows(n=16):
    """obs, actions, times, noise of n rows, the same in every process."""
    data = _data()
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(len(data), (n,), generator=g)
    obs = torch.from_numpy(data.observations[idx.numpy()])
    actions = torch.from_numpy(data.actions[idx.numpy()])
    return obs, actions, torch.rand(n, generator=g), torch.randn(n, data.action_dim, generator=g)


def _one_fixed_step(rank, world):
    """One step of FixedBC on this rank's half (or, in one process, all) of the fixed rows."""
    rows = _fixed_rows()
    share = len(rows[0]) // world
    bc = FixedBC(_actor(seed=0), _data(), _config(batch_size=len(rows[0]), grad_clip=0.05))
    bc.rows = tuple(r[rank * share : (rank + 1) * share] for r in rows)
    scalars = bc.train_step()
    return {"actor": _state(bc.actor), "ema": _state(bc.ema.shadow), "scalars": scalars}


class SignalledBC(FlowBC):
    """FlowBC whose rank 1 alone gets a (deferred) Ctrl-C during its third step."""

    def train_step(self):
        if self.step == 2 and distributed.rank() == 1:
            self._interrupts.requested = True  # what DeferredInterrupt's handler does
        return super().train_step()


def _refusals_then_averaged_step(rank, tmp):
    """A batch of 15 rows on 2 ranks is refused on both; a Ctrl-C on rank 1 stops both after
    the same step; then one step of fixed rows."""
    try:
        FlowBC(_actor(seed=0), _data(), _config(batch_size=15))
        refused = None
    except ValueError as err:
        refused = str(err)
    bc = SignalledBC(_actor(seed=0), _data(), _config())
    try:
        bc.learn(progress_bar=False, checkpoint_path=tmp / "stopped.ckpt", checkpoint_interval=0)
        stopped = None
    except KeyboardInterrupt:
        stopped = (bc.step, (tmp / "stopped.ckpt").is_file())  # rank 0 wrote it before
    return {"refused": refused, "stopped": stopped, **_one_fixed_step(rank, WORLD)}


# ---------------------------------------------------------------------- tests


def test_two_ranks_train_identical_copies_write_only_on_rank_0_and_resume_across(tmp_path):
    rng = np.random.default_rng(0)
    OfflineDataset(
        observations=rng.normal(size=(64, 3)), actions=rng.uniform(-2, 2, size=(64, 1))
    ).save_npz(tmp_path / "pendulum.npz")
    data = _data()
    single = FlowBC(_actor(seed=0), data, _config())
    single.learn(3, progress_bar=False)
    single.save_checkpoint(tmp_path / "single.ckpt")
    saved_generator = single.generator.get_state()

    r0, r1 = ok_results(
        run_ranks(_train_save_resume, WORLD, tmp_path, tmp_path / "single.ckpt", timeout_s=90)
    )
    # Both start from rank 0's weights (rank 1 built other ones), the EMA from them too.
    assert _equal(r0["initial"], r1["initial"])
    assert _equal(r0["initial"], _state(_actor(seed=100)))
    assert _equal(r0["initial_ema"], r0["initial"]) and _equal(r1["initial_ema"], r1["initial"])
    # Each rank draws its own half of the global batch (16 rows: 8 each).
    assert r0["first_batch"].shape == (8, 2)
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    # After 6 steps: bit-identical actors, EMAs and (averaged) losses; different RNG streams.
    a, b = r0["trained"], r1["trained"]
    assert _equal(a["actor"], b["actor"]) and _equal(a["ema"], b["ema"])
    assert not _equal(a["actor"], r0["initial"])
    assert a["losses"] == b["losses"] and len(a["losses"]) == 6
    assert not torch.equal(a["generator"], b["generator"])
    # Only rank 0 wrote: one TensorBoard event file per run, the checkpoints, rank0.ckpt,
    # the bc stage's files.
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    for tb in ("run/tb", "bc/tb"):
        assert len(glob.glob(str(tmp_path / tb / "events.*"))) == 1
    assert [f for f in files if "/tb/" not in f] == [
        "bc/.lock",
        "bc/bc.json",
        "bc/bc.pt",
        "bc/stage.json",
        "bc/trainer.ckpt",
        "pendulum.npz",
        "rank0.ckpt",
        "run/bc.ckpt",
        "single.ckpt",
    ]
    assert r0["bc_stage"] == r1["bc_stage"] == (str(tmp_path / "bc" / "bc.pt"), True)
    assert (
        FlowBC.load_checkpoint(
            tmp_path / "bc" / "trainer.ckpt", OfflineDataset.load_npz(tmp_path / "pendulum.npz")
        ).step
        == 4
    )
    # The 2-rank checkpoint loads in one process and acts as rank 0's EMA actor.
    loaded = FlowBC.load_checkpoint(tmp_path / "run" / "bc.ckpt", data)
    assert loaded.step == 6 and loaded.losses == a["losses"]
    assert _equal(_state(loaded.ema.shadow), a["ema"])
    assert torch.equal(_samples(loaded.actor_ema), a["samples"])
    assert torch.equal(a["samples"], b["samples"])
    # The single process's checkpoint resumed on 2 ranks: rank 0 continues its RNG stream,
    # rank 1 starts another one; both end identical.
    assert r0["loaded"]["step"] == r1["loaded"]["step"] == 3
    assert torch.equal(r0["loaded"]["generator"], saved_generator)
    assert not torch.equal(r1["loaded"]["generator"], saved_generator)
    assert _equal(r0["resumed"]["actor"], r1["resumed"]["actor"])
    assert _equal(r0["resumed"]["ema"], r1["resumed"]["ema"])
    assert not _equal(r0["resumed"]["actor"], _state(single.actor))


def test_one_step_on_two_ranks_is_one_step_on_the_union_of_their_batches(tmp_path):
    r0, r1 = ok_results(run_ranks(_refusals_then_averaged_step, WORLD, tmp_path, timeout_s=60))
    # A world size that does not divide the global batch: a ValueError on every rank (and
    # no rank waits for another: both went on).
    for r in (r0, r1):
        assert r["refused"] is not None and "not divisible by the world size 2" in r["refused"]
    # A Ctrl-C that reached rank 1 alone stopped both ranks after step 3, with rank 0's
    # checkpoint of step 3 on disk before either raised.
    assert r0["stopped"] == r1["stopped"] == (3, True)
    assert FlowBC.load_checkpoint(tmp_path / "stopped.ckpt", _data()).step == 3
    whole = _one_fixed_step(0, 1)
    assert _equal(r0["actor"], r1["actor"]) and _equal(r0["ema"], r1["ema"])
    assert r0["scalars"] == r1["scalars"]
    for key, value in whole["actor"].items():
        torch.testing.assert_close(r0["actor"][key], value, rtol=0, atol=1e-6)
    # The loss is the mean over ranks, the gradient norm that of the averaged gradient
    # (clipped: grad_clip = 0.05 is below it, so the step is the clipped union's).
    assert abs(r0["scalars"]["loss"] - whole["scalars"]["loss"]) < 1e-6
    assert abs(r0["scalars"]["grad_norm"] - whole["scalars"]["grad_norm"]) < 1e-5
    assert whole["scalars"]["grad_norm"] > 0.05
