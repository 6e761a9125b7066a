"""Generator trainers on 2 gloo CPU ranks: identical copies, averaged gradients, rank-0 files."""

import math

import torch
from ranks import ok_results, run_ranks

from flowrl.generative.consistency import teacher_loss
from flowrl.generative.data import mixture
from flowrl.generative.models import MLPGenerator
from flowrl.generative.trainer import DistillConfig, DistillTrainer, TeacherConfig, TeacherTrainer

WORLD = 2


def _data():
    return mixture(256, kind="4gaussians", radius=2.0, std=0.1, seed=0)


def _net(seed):
    torch.manual_seed(seed)
    return MLPGenerator(2, width=16, depth=1, num_classes=4)


def _teacher_config(**overrides):
    fields = dict(steps=4, batch_size=16, checkpoint_interval=2, sample_interval=2, num_samples=8)
    return TeacherConfig(**{**fields, **overrides})


def _teacher(seed, out_dir=None, **overrides):
    x, y = _data()
    return TeacherTrainer(_net(seed), x, y, _teacher_config(**overrides), out_dir=out_dir)


def _student(teacher_net, out_dir=None):
    x, y = _data()
    cfg = DistillConfig(
        steps=3, batch_size=16, dmd_weight=0.5, fake_steps=1, checkpoint_interval=0,
        sample_interval=0, num_samples=8, tangent_warmup_steps=2,
    )  # fmt: skip
    return DistillTrainer(teacher_net, x, y, cfg, out_dir=out_dir)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _teacher_samples(trainer):
    torch.manual_seed(11)
    with torch.no_grad():
        return trainer.sample(16, num_steps=2, y=torch.arange(16) % 4)


# ---------------------------------------------------------------------- run on each rank


def _teacher_student_resume(rank, tmp, single_dir):
    """Teacher then rCM student on 2 ranks; a NaN on one rank; a single-run resume."""
    t = _teacher(seed=100 + rank, out_dir=tmp / "teacher")  # the same out_dir on every rank
    initial, initial_ema = _state(t.model), _state(t.ema.shadow)
    t.fit(progress_bar=False)
    t.save_checkpoint(tmp / f"rank{rank}.pt")  # a no-op on rank 1
    teacher = {
        "model": _state(t.model),
        "ema": _state(t.ema.shadow),
        "losses": [row["loss"] for row in t.history],
        "generator": t.generator.get_state(),
        "samples": _teacher_samples(t),
    }
    s = _student(t.teacher, out_dir=tmp / "rcm")
    s.fit(progress_bar=False, tensorboard=False)
    student = {name: _state(getattr(s, name)) for name in ("model", "fake", "weight")}
    student["ema"] = _state(s.ema.shadow)
    # A non-finite loss on rank 1 only: both ranks refuse the step (neither hangs).
    if rank == 1:
        with torch.no_grad():
            t.model.net.output.weight.fill_(math.inf)
    before = _state(t.model)
    try:
        t.train_step()
        refused = None
    except FloatingPointError as err:
        refused = str(err)
    unchanged = _equal(before, _state(t.model))
    # A single process's run resumed on 2 ranks.
    r = _teacher(seed=200 + rank, out_dir=single_dir)
    r.load_checkpoint(single_dir / "checkpoint.pt")
    loaded = {"step": r.step, "generator": r.generator.get_state(), "global": r.global_rng_state}
    r.fit(4, progress_bar=False, tensorboard=False)
    resumed = {"from": r.resumed_from, "model": _state(r.model), "ema": _state(r.ema.shadow)}
    return {
        "initial": initial,
        "initial_ema": initial_ema,
        "teacher": teacher,
        "student": student,
        "refused": refused,
        "unchanged": unchanged,
        "loaded": loaded,
        "resumed": resumed,
    }


class FixedTeacher(TeacherTrainer):
    """A teacher step on given samples, labels, times and noise (no label dropout)."""

    rows: tuple = ()

    def train_step(self):
        x1, y, t, noise = self.rows
        loss = teacher_loss(self.model, x1, y, t, noise, p_uncond=0.0)
        out = {"loss": float(loss.detach())}
        out["grad_norm"] = self._apply(loss, list(self.model.parameters()), out)
        return out


def _one_fixed_step(rank, world):
    """One step on this rank's half (or, in one process, all) of 16 fixed rows."""
    x, y = _data()
    g = torch.Generator().manual_seed(5)
    idx = torch.randint(len(x), (16,), generator=g)
    rows = (x[idx], y[idx], torch.rand(16, generator=g), torch.randn(16, 2, generator=g))
    share = 16 // world
    x, y = _data()
    trainer = FixedTeacher(_net(0), x, y, _teacher_config(grad_clip=0.05, warmup_steps=0))
    trainer.rows = tuple(r[rank * share : (rank + 1) * share] for r in rows)
    scalars = trainer.train_step()
    return {"model": _state(trainer.model), "ema": _state(trainer.ema.shadow), **scalars}


def _refusal_then_averaged_step(rank):
    """A batch of 15 samples on 2 ranks is refused on both; then they step together."""
    try:
        _teacher(seed=0, batch_size=15)
        refused = None
    except ValueError as err:
        refused = str(err)
    return {"refused": refused, **_one_fixed_step(rank, WORLD)}


# ---------------------------------------------------------------------- tests


def test_two_ranks_train_identical_copies_write_only_on_rank_0_and_resume_across(tmp_path):
    single = _teacher(seed=0, out_dir=tmp_path / "single")
    single.fit(2, progress_bar=False, tensorboard=False)
    saved_generator, saved_global = single.generator.get_state(), single.global_rng_state

    r0, r1 = ok_results(
        run_ranks(_teacher_student_resume, WORLD, tmp_path, tmp_path / "single", timeout_s=120)
    )
    # Both start from rank 0's weights (rank 1 built others); the EMA is a copy of them.
    assert _equal(r0["initial"], r1["initial"]) and _equal(r0["initial"], _state(_net(100)))
    assert _equal(r0["initial_ema"], r0["initial"]) and _equal(r1["initial_ema"], r1["initial"])
    # After training: bit-identical teachers, EMAs, logged (averaged) losses, samples...
    a, b = r0["teacher"], r1["teacher"]
    assert _equal(a["model"], b["model"]) and _equal(a["ema"], b["ema"])
    assert not _equal(a["model"], r0["initial"])
    assert a["losses"] == b["losses"] and len(a["losses"]) == 4
    assert torch.equal(a["samples"], b["samples"])
    # ...from different batches and noise.
    assert not torch.equal(a["generator"], b["generator"])
    # rCM: student, its EMA, the adaptive weight and the fake-score net identical too.
    for name in ("model", "ema", "fake", "weight"):
        assert _equal(r0["student"][name], r1["student"][name]), name
    # A non-finite loss on rank 1 is refused on both ranks, and nothing is applied.
    for r in (r0, r1):
        assert r["refused"] is not None and "not finite on 1 of 2 ranks" in r["refused"]
        assert r["unchanged"]
    # Only rank 0 wrote: grids, one event file per stage, checkpoints, rank0.pt.
    files = sorted(
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and "/tb/" not in p.as_posix()
    )
    assert files == [
        "rank0.pt",
        "rcm/checkpoint.pt",
        "rcm/samples_0000003.png",
        "single/checkpoint.pt",
        "single/samples_0000002.png",
        "single/samples_0000004.png",
        "teacher/checkpoint.pt",
        "teacher/samples_0000002.png",
        "teacher/samples_0000004.png",
    ]
    assert len(list((tmp_path / "teacher" / "tb").glob("events.*"))) == 1
    assert not (tmp_path / "rcm" / "tb").exists()
    # The 2-rank checkpoint loads in one process and samples as rank 0's teacher does.
    loaded = _teacher(seed=3)
    loaded.load_checkpoint(tmp_path / "teacher" / "checkpoint.pt")
    assert loaded.step == 4 and _equal(_state(loaded.ema.shadow), a["ema"])
    assert torch.equal(_teacher_samples(loaded), a["samples"])
    student = _student(loaded.teacher)
    student.load_checkpoint(tmp_path / "rcm" / "checkpoint.pt")
    assert _equal(_state(student.ema.shadow), r0["student"]["ema"])
    # The single process's checkpoint resumed on 2 ranks: rank 0 continues its streams,
    # rank 1 gets new ones; both end identical, at step 4.
    assert r0["loaded"]["step"] == r1["loaded"]["step"] == 2
    assert torch.equal(r0["loaded"]["generator"], saved_generator)
    assert torch.equal(r0["loaded"]["global"], saved_global)
    assert not torch.equal(r1["loaded"]["generator"], saved_generator)
    assert not torch.equal(r1["loaded"]["global"], saved_global)
    assert r0["resumed"]["from"] == r1["resumed"]["from"] == 2
    assert _equal(r0["resumed"]["model"], r1["resumed"]["model"])
    assert _equal(r0["resumed"]["ema"], r1["resumed"]["ema"])


def test_one_step_on_two_ranks_is_one_step_on_the_union_of_their_batches():
    r0, r1 = ok_results(run_ranks(_refusal_then_averaged_step, WORLD, timeout_s=60))
    # A world size that does not divide the global batch: a ValueError on every rank (and
    # no rank waits for another: both went on to the step below).
    for r in (r0, r1):
        assert r["refused"] is not None and "not divisible by the world size 2" in r["refused"]
    whole = _one_fixed_step(0, 1)
    assert _equal(r0["model"], r1["model"]) and _equal(r0["ema"], r1["ema"])
    for key, value in whole["model"].items():
        torch.testing.assert_close(r0["model"][key], value, rtol=0, atol=1e-6)
    assert abs(r0["loss"] - whole["loss"]) < 1e-6 and r0["loss"] == r1["loss"]
    assert abs(r0["grad_norm"] - whole["grad_norm"]) < 1e-5
    assert whole["grad_norm"] > 0.05  # clipped: the step is that of the union's gradient
