"""Trainers: exact resume, refusals, outputs on disk, and a small distillation that learns."""

import math

import pytest
import torch

from flowrl.generative.data import mixture, mixture_modes
from flowrl.generative.models import DiT, DiTConfig, MLPGenerator
from flowrl.generative.trainer import DistillConfig, DistillTrainer, TeacherConfig, TeacherTrainer
from flowrl.metrics import mode_counts, sliced_wasserstein


def toy_data(n=512):
    x, y = mixture(n, kind="4gaussians", radius=2.0, std=0.1)
    return x, y


def params_of(module):
    return [p.detach().clone() for p in module.parameters()]


def teacher(config=None, out_dir=None, seed=0):
    torch.manual_seed(seed)
    x, y = toy_data()
    net = MLPGenerator(2, width=32, depth=1, num_classes=4)
    cfg = config or TeacherConfig(steps=6, batch_size=16, checkpoint_interval=3, sample_interval=0)
    return TeacherTrainer(net, x, y, cfg, out_dir=out_dir)


def distiller(teacher_net, out_dir=None):
    x, y = toy_data()
    cfg = DistillConfig(
        steps=6, batch_size=16, dmd_weight=0.5, fake_steps=1, guidance=2.0,
        checkpoint_interval=3, sample_interval=0, tangent_warmup_steps=4, sigma_d=1.4,
    )  # fmt: skip
    return DistillTrainer(teacher_net, x, y, cfg, out_dir=out_dir)


@pytest.mark.parametrize("kind", ["teacher", "rcm"])
def test_resume_reproduces_the_next_steps_exactly(tmp_path, kind):
    base = teacher(out_dir=tmp_path / "t")
    make = (
        (lambda d: teacher(out_dir=d))
        if kind == "teacher"
        else (lambda d: distiller(base.model, d))
    )
    # Uninterrupted run of 6 steps.
    full = make(tmp_path / "full")
    full.fit(6, progress_bar=False, tensorboard=False)
    # Interrupted: 3 steps (a checkpoint is written at step 3), then a new process resumes.
    first = make(tmp_path / "split")
    first.fit(3, progress_bar=False, tensorboard=False)
    resumed = make(tmp_path / "split")
    resumed.fit(6, progress_bar=False, tensorboard=False)
    assert resumed.step == 6
    for a, b in zip(params_of(full.model), params_of(resumed.model), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(params_of(full.ema), params_of(resumed.ema), strict=True):
        assert torch.equal(a, b)
    if kind == "rcm":
        for a, b in zip(params_of(full.fake), params_of(resumed.fake), strict=True):
            assert torch.equal(a, b)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_checkpoint_of_another_trainer_is_refused(tmp_path):
    t = teacher(out_dir=tmp_path / "t")
    t.fit(3, progress_bar=False, tensorboard=False)
    d = distiller(t.model)
    with pytest.raises(ValueError, match="TeacherTrainer checkpoint"):
        d.load_checkpoint(tmp_path / "t" / "checkpoint.pt")


def test_bad_data_and_non_finite_loss_are_refused():
    x, y = toy_data(8)
    with pytest.raises(ValueError, match="NaN"):
        TeacherTrainer(MLPGenerator(2), x.clone().fill_(math.nan), None)
    with pytest.raises(ValueError, match="labels"):
        TeacherTrainer(MLPGenerator(2, num_classes=4), x, y[:3])
    t = teacher()
    with torch.no_grad():
        t.model.net.output.weight.fill_(math.inf)
    before = params_of(t.model)
    with pytest.raises(FloatingPointError, match="not applied"):
        t.train_step()
    for a, b in zip(before, params_of(t.model), strict=True):
        assert torch.equal(a, b)


def test_fit_writes_grids_tensorboard_and_checkpoint(tmp_path):
    cfg = TeacherConfig(
        steps=4, batch_size=16, sample_interval=2, checkpoint_interval=0, num_samples=32
    )
    t = teacher(cfg, out_dir=tmp_path)
    t.fit(progress_bar=False)
    assert (tmp_path / "samples_0000002.png").exists() and (
        tmp_path / "samples_0000004.png"
    ).exists()
    assert (tmp_path / "checkpoint.pt").exists()
    assert any((tmp_path / "tb").iterdir())
    samples = t.sample(10, num_steps=2, y=torch.arange(10) % 4, guidance=2.0)
    assert samples.shape == (10, 2) and torch.isfinite(samples).all()


def test_scd_learns_a_one_step_sampler_on_a_mixture():
    """A 1-step teacher collapses the 4 modes to the centre; a short sCD run separates them."""
    torch.manual_seed(0)
    x, _ = mixture(8000, kind="4gaussians", radius=2.0, std=0.1, seed=0)
    reference, _ = mixture(2000, kind="4gaussians", radius=2.0, std=0.1, seed=1)
    modes = mixture_modes("4gaussians", 2.0)
    net = MLPGenerator(2, width=128, depth=2)
    cfg = TeacherConfig(
        steps=3000, batch_size=256, lr=2e-3, time_sampler="uniform", sample_interval=0
    )
    tt = TeacherTrainer(net, x, None, cfg)
    tt.fit(progress_bar=False)
    scfg = DistillConfig(
        steps=800, batch_size=256, lr=3e-4, ema_decay=0.9, tangent_warmup_steps=200,
        sigma_d=float(x.std()), sample_interval=0,
    )  # fmt: skip
    dt = DistillTrainer(tt.teacher, x, None, scfg)
    dt.fit(progress_bar=False)
    with torch.no_grad():
        teacher_1 = tt.sample(2000, num_steps=1)
        student_1 = dt.sample(2000, num_steps=1)
    sw_teacher = float(sliced_wasserstein(teacher_1, reference))
    sw_student = float(sliced_wasserstein(student_1, reference))
    in_modes = mode_counts(student_1, modes, 0.5)
    print(f"1-step SW: teacher {sw_teacher:.3f}, sCD student {sw_student:.3f}; modes {in_modes}")
    assert sw_student < 0.4 * sw_teacher
    # Every mode gets at least half its fair share (the 1-step teacher puts ~0 in any).
    assert (in_modes > 0.5 * len(student_1) / 4).all()


def test_distilling_a_dit_runs_through_the_fused_attention_jvp():
    """sCD/rCM use the attention tangent only in stop-gradient targets: no refusal."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 4, 4), torch.arange(32) % 2
    net = DiT(DiTConfig(sample_shape=(1, 4, 4), width=16, depth=1, heads=2, num_classes=2))
    cfg = DistillConfig(
        steps=2, batch_size=4, dmd_weight=0.5, fake_steps=1, sample_interval=0,
        tangent_warmup_steps=0,
    )  # fmt: skip
    trainer = DistillTrainer(net, x, y, cfg)
    before = params_of(trainer.model)
    trainer.fit(progress_bar=False, tensorboard=False)
    assert trainer.step == 2
    assert all(math.isfinite(row["loss"]) for row in trainer.history)
    after = params_of(trainer.model)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
