"""Interrupted work is not lost: BC, the dataset teacher and fine-tuning resume on a rerun.

In process: BC stopped by Ctrl-C (or dropped as if killed) resumes bit for bit; fine-tuning
stopped by Ctrl-C writes its last update boundary, which a resume restores exactly
(parameters, optimizer states, counters). Through the real entry point
(``experiments/train.py`` in a subprocess): a pipeline run is stopped with SIGINT or SIGKILL
in BC and again in fine-tuning, then rerun with the same command each time; BC ends with
the same weights as an uninterrupted run, fine-tuning resumes at or after its last
checkpoint, and no half-written file is left. The generator trainers' rows are in
``test_generators.py``.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.callbacks import LearningCurveCallback
from flowrl.checkpoints import TrainingCheckpoint
from flowrl.data.datasets import OfflineDataset
from flowrl.experiments import train as TRAIN
from flowrl.policies import FlowActor

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "train.py"
PARTIAL = re.compile(r"\.tmp$|\.partial\.")


def dataset(rows=256):
    rng = np.random.default_rng(0)
    return OfflineDataset(
        observations=rng.normal(size=(rows, 3)).astype(np.float32),
        actions=rng.uniform(-2, 2, size=(rows, 1)).astype(np.float32),
    )


def new_bc(steps=40):
    config = BCConfig(steps=steps, batch_size=16, seed=3, log_interval=5)
    return FlowBC.from_dataset(dataset(), actor_config={"width": 16, "depth": 1}, config=config)


def trainer_state(bc):
    out = {f"actor.{k}": v for k, v in bc.actor.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in bc.actor_ema.state_dict().items()})
    for i, group in bc.optimizer.state_dict()["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in group.items()})
    return out


def assert_equal_states(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def nested_equal(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for key in a:
            nested_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            nested_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


# ---------------------------------------------------------------------- BC in process


def test_bc_stopped_by_ctrl_c_resumes_bit_identically(tmp_path):
    reference = new_bc()
    reference.learn(progress_bar=False)

    bc = new_bc()
    step = bc.train_step

    def step_then_signal():
        out = step()
        if bc.step == 17:  # the signal arrives mid-run; BC stops after this whole step
            os.kill(os.getpid(), signal.SIGINT)
        return out

    bc.train_step = step_then_signal
    ckpt = tmp_path / "trainer.ckpt"
    with pytest.raises(KeyboardInterrupt):
        bc.learn(progress_bar=False, checkpoint_path=ckpt, checkpoint_interval=10)
    resumed = FlowBC.load_checkpoint(ckpt, dataset())
    assert resumed.step == 17 and len(resumed.losses) == 17
    resumed.learn(progress_bar=False, checkpoint_path=ckpt, tensorboard_log=tmp_path / "tb")
    assert_equal_states(trainer_state(resumed), trainer_state(reference))
    assert resumed.losses == reference.losses
    assert not [p for p in tmp_path.rglob("*") if PARTIAL.search(p.name)]


def test_bc_crashed_resumes_from_its_last_checkpoint_bit_identically(tmp_path):
    reference = new_bc()
    reference.learn(progress_bar=False)
    ckpt = tmp_path / "trainer.ckpt"
    crashed = new_bc()
    step = crashed.train_step

    def step_then_crash():
        out = step()
        if crashed.step == 25:
            raise RuntimeError("the machine went away")
        return out

    crashed.train_step = step_then_crash
    with pytest.raises(RuntimeError):
        crashed.learn(progress_bar=False, checkpoint_path=ckpt, checkpoint_interval=10)
    resumed = FlowBC.load_checkpoint(ckpt, dataset())
    assert resumed.step == 20  # lost: 5 steps, less than one checkpoint period
    resumed.learn(progress_bar=False)
    assert_equal_states(trainer_state(resumed), trainer_state(reference))


# ---------------------------------------------------------------------- fine-tuning in process

TINY = [
    "env=pendulum",
    "env.max_episode_steps=50",
    "total_timesteps=512",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=2",
    "policy.actor.width=16",
    "policy.actor.depth=1",
    "policy.noise_hidden=[8]",
    "policy.value_hidden=[16]",
    "eval.freq=128",
    "eval.episodes=1",
    "checkpoint.finetune_steps=128",
    "progress_bar=false",
]


@pytest.mark.parametrize("algo", ["reinflow", "policyflow", "fpo", "fpo_pp", "nft", "dppo", "ppo"])
def test_finetuning_stopped_by_ctrl_c_resumes_exactly_where_it_saved(tmp_path, monkeypatch, algo):
    out = tmp_path / "run"
    overrides = [*TINY, f"algo={algo}", f"output_dir={out}"]
    if algo != "reinflow":  # the flow-policy fields above are ReinFlow's policy's
        overrides = [o for o in overrides if not o.startswith("policy.")]
    if algo in ("policyflow", "fpo", "fpo_pp", "nft", "dppo"):  # a small flow net for them too
        overrides += ["policy.actor.width=16", "policy.actor.depth=1", "policy.value_hidden=[16]"]
    if algo == "dppo":
        overrides.append("policy.num_steps=2")
    cfg = TRAIN.compose_config(*overrides)
    built = []
    build = TRAIN.build_model
    monkeypatch.setattr(TRAIN, "build_model", lambda *a: built.append(build(*a)) or built[-1])
    evaluate = LearningCurveCallback.evaluate

    def evaluate_then_signal(self):
        row = evaluate(self)
        if self.model.num_timesteps >= 300:  # mid-rollout, after two periodic checkpoints
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(LearningCurveCallback, "evaluate", evaluate_then_signal)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.train(cfg)
    live = built[-1]
    ckpt = TrainingCheckpoint(out / "checkpoint.pt", save_freq=0)
    state = ckpt.load()
    saved_steps = state["counters"]["num_timesteps"]
    # The last update boundary: a whole number of rollouts, not past the stop.
    assert saved_steps % 64 == 0 and 256 <= saved_steps <= live.num_timesteps
    # Nothing has updated since that boundary, so the saved weights are the live ones.
    nested_equal(state["parameters"], live.get_parameters())
    assert not [p for p in out.rglob("*") if PARTIAL.search(p.name)]

    # A fresh model of the same config, resumed: parameters, optimizers, counters restored.
    monkeypatch.setattr(LearningCurveCallback, "evaluate", evaluate)
    venv = TRAIN.make_vec_env_from_config((cfg_obj := TRAIN.as_train_config(cfg)).env)
    fresh = build(cfg_obj, venv)
    ckpt.resume(fresh)
    nested_equal(fresh.get_parameters(), state["parameters"])
    assert (
        fresh.num_timesteps == saved_steps and fresh._n_updates == state["counters"]["_n_updates"]
    )

    # The rerun finishes the run: one TensorBoard run, one curve, no checkpoint left.
    results = TRAIN.train(cfg)
    steps = [row["timesteps"] for row in results["curve"]]
    assert steps[0] == 0 and steps[-1] == 512 and steps == sorted(set(steps))
    assert results["timesteps"] == 512
    runs = list((out / "tb").iterdir())
    assert len(runs) == 1
    # The interrupted session's events past the resumed step are purged: one point a step.
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    logged = [event.step for event in events.Scalars("eval/return_deterministic_mean")]
    assert logged == sorted(set(logged)) == steps, logged
    assert not (out / "checkpoint.pt").exists()


# ---------------------------------------------------------------------- off-policy flow learners

OFF_POLICY_TINY = [
    "env=pendulum",
    "env.max_episode_steps=50",
    "total_timesteps=512",
    "algo.learning_starts=64",
    "algo.batch_size=32",
    "eval.freq=128",
    "eval.episodes=1",
    "checkpoint.finetune_steps=128",
    "progress_bar=false",
]
OFF_POLICY_NETS = {
    "flowsac": [
        "policy.actor.width=16",
        "policy.actor.depth=1",
        "policy.noise_hidden=[8]",
        "policy.value_hidden=[16]",
    ],
    "dsrl": ["policy.net_arch=[16]"],  # and a BC actor to steer (pretrained=)
    "edp": [  # and the pretrained flow to fine-tune (pretrained=)
        "policy.value_hidden=[16]",
        "algo.num_candidates=4",
    ],
}


@pytest.mark.parametrize("algo", ["flowsac", "dsrl", "edp"])
def test_off_policy_finetuning_stopped_by_ctrl_c_resumes_with_its_replay_buffer(
    tmp_path, monkeypatch, algo
):
    """train.py's FlowSAC, DSRL and EDP runs: Ctrl-C writes the state now (replay buffer
    included), and the rerun of the same config resumes from it and finishes one curve."""
    from learner_helpers import pendulum_actor

    out = tmp_path / "run"
    overrides = [*OFF_POLICY_TINY, *OFF_POLICY_NETS[algo], f"algo={algo}", f"output_dir={out}"]
    if algo in ("dsrl", "edp"):
        pendulum_actor().save(tmp_path / "bc.pt")
        overrides.append(f"pretrained={tmp_path / 'bc.pt'}")
    cfg = TRAIN.compose_config(*overrides)
    built = []
    build = TRAIN.build_model
    monkeypatch.setattr(TRAIN, "build_model", lambda *a: built.append(build(*a)) or built[-1])
    evaluate = LearningCurveCallback.evaluate

    def evaluate_then_signal(self):
        row = evaluate(self)
        if self.model.num_timesteps >= 300:
            os.kill(os.getpid(), signal.SIGINT)
        return row

    monkeypatch.setattr(LearningCurveCallback, "evaluate", evaluate_then_signal)
    with pytest.raises(KeyboardInterrupt):
        TRAIN.train(cfg)
    live = built[-1]
    state = TrainingCheckpoint(out / "checkpoint.pt", save_freq=0).load()
    assert state["counters"]["num_timesteps"] == live.num_timesteps == 384
    nested_equal(state["parameters"], live.get_parameters())
    buffer = state["replay_buffer"]
    # SB3 stores a step's transition after that step's callbacks, and the Ctrl-C landed in
    # one (the evaluation): the buffer holds every transition but that step's.
    assert buffer["pos"] == live.replay_buffer.pos == 383
    np.testing.assert_array_equal(buffer["actions"].numpy(), live.replay_buffer.actions[:383])
    assert not [p for p in out.rglob("*") if PARTIAL.search(p.name)]

    monkeypatch.setattr(LearningCurveCallback, "evaluate", evaluate)
    results = TRAIN.train(cfg)
    steps = [row["timesteps"] for row in results["curve"]]
    assert steps[0] == 0 and steps[-1] == 512 and steps == sorted(set(steps))
    assert results["timesteps"] == 512
    assert not (out / "checkpoint.pt").exists()


# ---------------------------------------------------------------------- the real entry point

PIPELINE = [
    "stages=[dataset,bc,finetune]",
    "env=pendulum",
    "dataset.quality=random",
    "dataset.transitions=400",
    "bc.actor={width: 16, depth: 1, num_steps: 2}",
    "bc.train.steps=2500",
    "bc.train.batch_size=64",
    "checkpoint.bc_steps=100",
    "total_timesteps=2048",
    "algo.n_steps=128",
    "algo.batch_size=64",
    "algo.n_epochs=2",
    "policy.value_hidden=[16]",
    "policy.noise_hidden=[8]",
    "eval.freq=1024",
    "eval.episodes=1",
    "eval.stochastic=false",
    "checkpoint.finetune_steps=256",
    "progress_bar=false",
]


class Run:
    """experiments/train.py in a subprocess with the pipeline's overrides."""

    def __init__(self, root: Path, *extra: str):
        self.root = root
        self.args = [*PIPELINE, f"pretrain_dir={root}/pre", f"output_dir={root}/run", *extra]
        self.args.append(f"hydra.run.dir={root}/hydra")
        self.log = root / "log.txt"

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("a") as log:
            return subprocess.Popen(
                [sys.executable, str(SCRIPT), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=env,
            )

    def finish(self) -> str:
        start = len(self.log.read_text()) if self.log.exists() else 0
        process = self.start()
        assert process.wait(timeout=300) == 0, self.log.read_text()[-3000:]
        return self.log.read_text()[start:]

    def stop_when(self, path: Path, signum: int) -> str:
        """Start, send ``signum`` once ``path`` exists, wait; the run's new log lines."""
        start = len(self.log.read_text()) if self.log.exists() else 0
        process = self.start()
        deadline = time.time() + 240
        while not path.exists():
            assert process.poll() is None, self.log.read_text()[-3000:]
            assert time.time() < deadline, "the run never wrote " + str(path)
            time.sleep(0.05)
        process.send_signal(signum)
        assert process.wait(timeout=120) != 0  # stopped, not finished
        return self.log.read_text()[start:]


def bc_weights(root: Path):
    return FlowActor.load(root / "pre" / "bc" / "bc.pt").state_dict()


def check_chain(root: Path, bc_signal: int, finetune_signal: int) -> None:
    run = Run(root)
    bc_ckpt, ckpt = root / "pre" / "bc" / "trainer.ckpt", root / "run" / "checkpoint.pt"
    log = run.stop_when(bc_ckpt, bc_signal)
    assert not (root / "pre" / "bc" / "bc.pt").exists()
    if bc_signal == signal.SIGINT:
        assert re.search(r"BC interrupted at step \d+; checkpoint ->", log)
    saved = torch.load(bc_ckpt, weights_only=True)["step"]
    assert 100 <= saved < 2500

    log = run.stop_when(ckpt, finetune_signal)  # resumes BC, finishes it, stops fine-tuning
    assert re.search(rf"bc: resuming .*trainer.ckpt at step {saved}\b", log), log[-2000:]
    if finetune_signal == signal.SIGINT:
        assert re.search(r"interrupted; checkpoint of step \d+ written", log), log[-2000:]
    saved_steps = torch.load(ckpt, weights_only=True)["counters"]["num_timesteps"]
    assert 256 <= saved_steps < 2048

    log = run.finish()
    resumed_at = int(re.search(r"checkpoint.pt: resuming at step (\d+)", log).group(1))
    assert resumed_at >= saved_steps  # at most one checkpoint period lost
    assert "2048 env steps" in log
    assert not ckpt.exists() and (root / "run" / "results.json").is_file()
    assert len(list((root / "run" / "tb").iterdir())) == 1  # TensorBoard continued one run
    assert not [p for p in root.rglob("*") if PARTIAL.search(p.name)], "half-written file"


@pytest.mark.parametrize(
    "bc_signal, finetune_signal",
    [
        (signal.SIGINT, signal.SIGKILL),
        # The other pairing; each signal's path is also covered in process above.
        pytest.param(signal.SIGKILL, signal.SIGINT, marks=pytest.mark.slow),
    ],
    ids=["sigint_bc-sigkill_finetune", "sigkill_bc-sigint_finetune"],
)
def test_pipeline_interrupted_in_bc_and_in_finetuning_resumes(tmp_path, bc_signal, finetune_signal):
    # The uninterrupted BC, in this process (same dataset seed, same BC settings).
    reference = tmp_path / "reference"
    args = Run(reference, "stages=[dataset,bc]").args
    TRAIN.train(TRAIN.compose_config(*[a for a in args if not a.startswith("hydra.")]))
    root = tmp_path / "chain"
    root.mkdir()
    check_chain(root, bc_signal, finetune_signal)
    # BC resumed bit for bit: the same actor as the uninterrupted run.
    assert_equal_states(bc_weights(root), bc_weights(reference))


# ---------------------------------------------------------------------- off-policy (SAC)


def test_sac_stopped_by_ctrl_c_resumes_with_its_replay_buffer(tmp_path):
    """The dataset stage's SAC teacher (and any SB3 off-policy run) through TrainingCheckpoint."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.env_util import make_vec_env

    def new_sac():
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
        return SAC(
            "MlpPolicy",
            env,
            learning_starts=50,
            buffer_size=1000,
            seed=0,
            policy_kwargs={"net_arch": [16]},
        )

    model = new_sac()
    ckpt = TrainingCheckpoint(tmp_path / "teacher.ckpt", save_freq=100)
    train = model.train

    def train_then_signal(*args, **kwargs):
        train(*args, **kwargs)
        if model.num_timesteps == 230:
            os.kill(os.getpid(), signal.SIGINT)

    model.train = train_then_signal
    with pytest.raises(KeyboardInterrupt):
        model.learn(400, callback=ckpt)
    assert ckpt.save_latest()  # off-policy: the state now, replay buffer included
    state = ckpt.load()
    assert state["counters"]["num_timesteps"] == model.num_timesteps == 230
    fresh = new_sac()
    ckpt.resume(fresh)
    nested_equal(fresh.get_parameters(), model.get_parameters())
    assert torch.equal(fresh.log_ent_coef, model.log_ent_coef)
    assert fresh.replay_buffer.pos == model.replay_buffer.pos == 230
    for name in ("observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(
            getattr(fresh.replay_buffer, name), getattr(model.replay_buffer, name)
        )
    fresh.learn(400 - fresh.num_timesteps, callback=ckpt, reset_num_timesteps=False)
    assert fresh.num_timesteps == 400


# ---------------------------------------------------------------------- signals


def test_sigterm_interrupts_like_ctrl_c_inside_the_block_only():
    from flowrl.checkpoints import sigterm_as_interrupt

    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_deferred_signal_waits_for_the_step_and_a_second_ctrl_c_does_not():
    from flowrl.checkpoints import DeferredInterrupt

    with DeferredInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # held: the step goes on
        assert stop.requested and not stop.clean
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second signal stops at once
            time.sleep(1)
        with pytest.raises(KeyboardInterrupt):
            stop.raise_if_requested()
        assert stop.clean
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
