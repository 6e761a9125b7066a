"""Generator trainers: planted checkpoints are refused unread; interrupted runs resume exactly.

In process: a pickle payload at the checkpoint path never runs (direct load, automatic resume
in ``fit`` and the pipeline), unreadable files name themselves, and Ctrl-C or a kill midway
followed by a resume ends bit for bit where an uninterrupted run ends. Through the real entry
point (``experiments/generators.py`` in a subprocess): SIGINT and SIGKILL, then the same
command again.
"""

import importlib.util
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flowrl.generative.data import mixture
from flowrl.generative.finetune import RewardFinetuneConfig, RewardFinetuneTrainer
from flowrl.generative.models import MLPGenerator
from flowrl.generative.trainer import (
    DistillConfig,
    DistillTrainer,
    GuidanceFreeConfig,
    GuidanceFreeTrainer,
    TeacherConfig,
    TeacherTrainer,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "generators.py"


def load_pipeline():
    return importlib.import_module("flowrl.experiments.generators")


PIPELINE = load_pipeline()


# ---------------------------------------------------------------------- helpers


def make_teacher(out_dir, steps=8):
    torch.manual_seed(0)
    x, y = mixture(256, kind="4gaussians", radius=2.0, std=0.1)
    cfg = TeacherConfig(
        steps=steps, batch_size=16, checkpoint_interval=3, sample_interval=0, log_interval=1
    )
    return TeacherTrainer(MLPGenerator(2, width=16, depth=1, num_classes=4), x, y, cfg, out_dir)


def make_rcm(out_dir, steps=8):
    torch.manual_seed(1)
    teacher_net = MLPGenerator(2, width=16, depth=1, num_classes=4)
    x, y = mixture(256, kind="4gaussians", radius=2.0, std=0.1)
    cfg = DistillConfig(
        steps=steps, batch_size=16, dmd_weight=0.5, fake_steps=1, guidance=2.0,
        checkpoint_interval=3, sample_interval=0, log_interval=1, tangent_warmup_steps=4,
    )  # fmt: skip
    return DistillTrainer(teacher_net, x, y, cfg, out_dir)


def make_gft(out_dir, steps=8):
    torch.manual_seed(2)
    x, y = mixture(256, kind="4gaussians", radius=2.0, std=0.1)
    cfg = GuidanceFreeConfig(
        steps=steps, batch_size=16, checkpoint_interval=3, sample_interval=0, log_interval=1
    )
    net = MLPGenerator(2, width=16, depth=1, num_classes=4, guidance_input=True)
    return GuidanceFreeTrainer(net, x, y, cfg, out_dir)


def make_nft(out_dir, steps=8):
    torch.manual_seed(3)
    x, y = mixture(256, kind="4gaussians", radius=2.0, std=0.1)
    cfg = RewardFinetuneConfig(
        steps=steps, batch_size=16, group_size=4, sample_steps=2, kl_coef=0.5,
        checkpoint_interval=3, sample_interval=0, log_interval=1,
    )  # fmt: skip
    net = MLPGenerator(2, width=16, depth=1, num_classes=4)
    return RewardFinetuneTrainer(net, lambda s, labels: -s.norm(dim=1), x, y, cfg, out_dir)


MAKERS = {"teacher": make_teacher, "rcm": make_rcm, "gft": make_gft, "nft": make_nft}


def assert_same(a, b, where="state"):
    """Exact equality of nested checkpoint states (torch.equal on every tensor)."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def read(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def quiet_fit(trainer, **kwargs):
    kwargs.setdefault("tensorboard", False)
    return trainer.fit(progress_bar=False, **kwargs)


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant(path, marker, fmt):
    """A checkpoint-looking file whose unpickling would create ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"kind": "TeacherTrainer", "step": 3, "model": Payload(marker)}
    if fmt == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as file:
            pickle.dump(state, file, protocol=2)


def pipeline_config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="generators", overrides=list(overrides)))


# ---------------------------------------------------------------------- loading


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_planted_pickle_is_refused_and_never_runs(tmp_path, fmt):
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "teacher" / "checkpoint.pt"
    plant(ckpt, marker, fmt)
    refused = (
        re.escape(f"{str(ckpt)!r} is not a flowrl generator checkpoint: ") + ".*nothing in it ran"
    )
    # Directly.
    with pytest.raises(ValueError, match=refused):
        make_teacher(None).load_checkpoint(ckpt)
    assert not marker.exists()
    # Through fit's automatic resume from out_dir.
    with pytest.raises(ValueError, match=refused):
        quiet_fit(make_teacher(tmp_path / "teacher"))
    assert not marker.exists()
    # Through the pipeline: its teacher stage resumes; a run without that stage loads it.
    tiny = ["dataset=gaussians8", "data.count=64", "model.width=8", "model.depth=1"]
    for stages in ("[teacher]", "[scd]"):
        cfg = pipeline_config(*tiny, f"stages={stages}", f"output_dir={tmp_path}")
        with pytest.raises(ValueError, match=refused):
            PIPELINE.run(cfg)
        assert not marker.exists()
    # Control: the payload is live (an unrestricted load would have run it).
    control = tmp_path / "control" / "checkpoint.pt"
    plant(control, tmp_path / "control_ran", fmt)
    if fmt == "torch.save":
        torch.load(control, weights_only=False)
    else:
        pickle.loads(control.read_bytes())
    assert (tmp_path / "control_ran").exists()


def test_unreadable_or_foreign_files_are_refused_with_their_name(tmp_path):
    good = tmp_path / "good.pt"
    trainer = make_teacher(None)
    trainer.save_checkpoint(good)
    data = good.read_bytes()
    state = read(good)
    cases = {
        "truncated.pt": (data[: len(data) // 2], "truncated"),
        "garbage.pt": (bytes(range(7, 256)) * 8, "damaged, or holds pickled objects"),
        "empty.pt": (b"", "damaged or truncated"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases["list.pt"] = (None, "holds a list")
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, tmp_path / "missing.pt")
    cases["missing.pt"] = (None, r"lacks \['optimizer'\]")
    torch.save({**state, "step": "3"}, tmp_path / "step.pt")
    cases["step.pt"] = (None, "its step is '3'")
    torch.save({**state, "kind": "DistillTrainer"}, tmp_path / "kind.pt")
    cases["kind.pt"] = (None, "is a DistillTrainer checkpoint, not a TeacherTrainer one")
    wide = MLPGenerator(2, width=32, depth=1, num_classes=4)
    wide = TeacherTrainer(wide, trainer.data, trainer.labels, trainer.config)
    cases["good.pt"] = (None, "does not fit this TeacherTrainer")
    for name, (_, why) in cases.items():
        target = wide if name == "good.pt" else make_teacher(None)
        with pytest.raises(ValueError, match=re.escape(repr(str(tmp_path / name))) + ".*" + why):
            target.load_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no flowrl generator checkpoint at"):
        make_teacher(None).load_checkpoint(tmp_path / "absent.pt")


def test_stale_tmp_of_a_killed_save_is_removed_and_ignored(tmp_path):
    quiet_fit(make_teacher(tmp_path), steps=3)
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    resumed = make_teacher(tmp_path)
    quiet_fit(resumed)
    assert resumed.resumed_from == 3 and resumed.step == 8
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------------- interrupts


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_sigint_finishes_the_step_checkpoints_it_and_resumes_bit_for_bit(tmp_path, kind):
    make = MAKERS[kind]
    full = make(tmp_path / "full")
    quiet_fit(full)
    first = make(tmp_path / "split")
    step = first.train_step

    def train_step():
        if first.step == 4:  # Ctrl-C arrives during step 5 (checkpoints fall at 3 and 6)
            os.kill(os.getpid(), signal.SIGINT)
        return step()

    first.train_step = train_step
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(first, tensorboard=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert first.step == 5 and read(tmp_path / "split" / "checkpoint.pt")["step"] == 5
    resumed = make(tmp_path / "split")
    quiet_fit(resumed, tensorboard=True)
    assert resumed.resumed_from == 5
    assert_same(full.state_dict(), resumed.state_dict())
    assert not list((tmp_path / "split").glob("*.tmp"))
    # TensorBoard: one run folder, each step logged once.
    assert [p.name for p in (tmp_path / "split" / "tb").iterdir() if p.is_dir()] == []
    events = EventAccumulator(str(tmp_path / "split" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


@pytest.mark.parametrize("when", ["before_update", "after_update"])
def test_keyboard_interrupt_inside_a_step(tmp_path, when):
    """Raised (not signalled) midway: undone and checkpointed if no optimizer had stepped,
    else the last periodic checkpoint stands; either way the resumed run is exact."""
    full = make_teacher(tmp_path / "full")
    quiet_fit(full)
    first = make_teacher(tmp_path / "split")
    if when == "before_update":
        step = first.train_step

        def train_step():
            if first.step == 4:
                first.batch()  # the step's draws have begun
                raise KeyboardInterrupt
            return step()

        first.train_step = train_step
    else:
        update = first.ema.update

        def ema_update(model):
            update(model)  # the optimizer has stepped: step 5 is half done
            if int(first.ema.num_updates) == 5:
                raise KeyboardInterrupt

        first.ema.update = ema_update
    with pytest.raises(KeyboardInterrupt):
        quiet_fit(first, tensorboard=True)
    saved = read(tmp_path / "split" / "checkpoint.pt")["step"]
    assert saved == (4 if when == "before_update" else 3)
    resumed = make_teacher(tmp_path / "split")
    quiet_fit(resumed, tensorboard=True)
    assert resumed.resumed_from == saved
    assert_same(full.state_dict(), resumed.state_dict())
    # The torn run logged step 4 after its checkpoint at 3: purged, not duplicated.
    events = EventAccumulator(str(tmp_path / "split" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))


def test_training_draws_from_the_global_rng_are_part_of_the_state(tmp_path):
    """A network using the global RNG (dropout) still resumes exactly, whatever else draws."""
    x, y = mixture(256, kind="4gaussians", radius=2.0, std=0.1)
    cfg = TeacherConfig(steps=6, batch_size=16, checkpoint_interval=3, sample_interval=0)

    def make(out_dir):
        torch.manual_seed(0)
        net = MLPGenerator(2, width=16, depth=1, num_classes=4)
        net.net.output = torch.nn.Sequential(torch.nn.Dropout(0.5), net.net.output)
        return TeacherTrainer(net, x, y, cfg, out_dir)

    full = make(tmp_path / "full")
    quiet_fit(full)
    quiet_fit(make(tmp_path / "split"), steps=3)
    torch.randn(100)  # the program draws from the global RNG between the two runs
    resumed = make(tmp_path / "split")
    quiet_fit(resumed)
    assert resumed.resumed_from == 3
    assert_same(full.state_dict(), resumed.state_dict())


# ---------------------------------------------------------------------- the entry point

TINY = [
    "dataset=gaussians8",
    "data.count=512",
    "model.width=16",
    "model.depth=1",
    "stages=[teacher,scd,rcm]",
    "progress_bar=false",
    *(
        f"{stage}.{key}={value}"
        for stage, steps, every in (("teacher", 300, 25), ("scd", 30, 10), ("rcm", 60, 10))
        for key, value in (
            ("steps", steps),
            ("checkpoint_interval", every),
            ("batch_size", 32),
            ("sample_interval", 0),
            ("num_samples", 16),
        )
    ),
]
FINAL = {"teacher": 300, "scd": 30, "rcm": 60}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (threads=1 like the subprocesses)."""
    out = tmp_path_factory.mktemp("reference")
    PIPELINE.run(pipeline_config(*TINY, f"output_dir={out}"))
    return out


def start(out, name):
    """The entry point in a subprocess, its output going to ``<out>/../<name>.log``."""
    log = open(out.parent / f"{name}.log", "wb")  # noqa: SIM115 (closed by finish)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *TINY, f"output_dir={out}"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        # A runner that ignores SIGINT would pass that on: give Python its usual handler.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.log = log
    return proc


def finish(proc, timeout=180):
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()
        proc.log.close()
    return Path(proc.log.name).read_text()


def wait_for(path, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before writing {path}: {finish(proc)}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)
    assert proc.poll() is None, "the stage finished before it could be interrupted"


def rerun_and_compare(out, reference, stage, saved):
    again = start(out, "rerun")
    log = finish(again)
    assert again.returncode == 0, log
    line = rf"^{stage}: {FINAL[stage]} steps \(.* this run, resumed from step {saved}\)$"
    assert re.search(line, log, re.MULTILINE), log
    for name, steps in FINAL.items():
        state = read(out / name / "checkpoint.pt")
        assert state["step"] == steps
        assert_same(read(reference / name / "checkpoint.pt"), state, name)
    assert not list(out.rglob("*.tmp"))


# About 25 s each on 2 CPU cores, mostly imports (torch, torch._dynamo, matplotlib,
# tensorboard) of the two processes: run with -m slow.
@pytest.mark.slow
def test_entry_point_sigint_checkpoints_and_the_same_command_resumes(tmp_path, reference):
    out = tmp_path / "run"
    proc = start(out, "interrupted")
    wait_for(out / "teacher" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGINT)
    log = finish(proc)
    assert proc.returncode == 130 and "run the same command again to resume" in log, log
    saved = read(out / "teacher" / "checkpoint.pt")["step"]
    assert 25 <= saved < FINAL["teacher"]
    assert f"teacher: interrupted; checkpoint at step {saved} written" in log, log
    assert not list(out.rglob("*.tmp")) and not (out / "scd").exists()
    rerun_and_compare(out, reference, "teacher", saved)


@pytest.mark.slow
def test_entry_point_sigkill_loses_at_most_one_period_and_resumes(tmp_path, reference):
    out = tmp_path / "run"
    proc = start(out, "killed")
    wait_for(out / "rcm" / "checkpoint.pt", proc)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    saved = read(out / "rcm" / "checkpoint.pt")["step"]
    assert 10 <= saved < FINAL["rcm"] and saved % 10 == 0
    # A kill in the middle of a save leaves a torn temporary file: the rerun must cope.
    (out / "rcm" / "checkpoint.pt.tmp").write_bytes(b"torn")
    rerun_and_compare(out, reference, "rcm", saved)


def test_a_checkpoint_of_another_config_is_refused_but_a_longer_run_resumes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    make_teacher(None).save_checkpoint(path)
    other = make_teacher(None)
    other.config.lr = 0.5
    with pytest.raises(
        ValueError, match=r"checkpoint.pt' was trained with another config \(differs in: lr\)"
    ):
        other.load_checkpoint(path)
    longer = make_teacher(None)
    longer.config.steps, longer.config.log_interval = 100, 7  # how long, how often: may change
    longer.load_checkpoint(path)
