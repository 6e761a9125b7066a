"""Bad inputs against flowrl's public surface: each must fail clearly, none may pass silently.

Every case is a row of a table: what is tried, the exception it must raise and a pattern its
message must match (so the message names the argument or file and says what is wrong). The
learner rows run for every on-policy learner in ``learner_helpers.LEARNERS``: a new learner
joins them by adding its row there. The pipeline rows run ``experiments/train.py``'s own
validation; the file rows damage each format flowrl reads.
"""

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from learner_helpers import LEARNERS, pendulum_actor
from stable_baselines3.common.env_util import make_vec_env

from flowrl.algos.bc import BCConfig, FlowBC
from flowrl.data.datasets import OfflineDataset
from flowrl.experiments import pretrain
from flowrl.experiments import train as TRAIN

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Bad:
    """One bad input: ``arg`` changes (or the call), the error it must raise, its message."""

    name: str
    change: dict[str, Any]
    error: type[BaseException]
    match: str


# ---------------------------------------------------------------------- learners

# Constructor arguments of every on-policy learner (the core's validation, inherited).
LEARNER_ARGS = [
    Bad("n_steps_zero", {"n_steps": 0}, ValueError, r"n_steps must be a positive integer, got 0"),
    Bad("n_steps_negative", {"n_steps": -8}, ValueError, r"n_steps must be a positive integer"),
    Bad("n_epochs_zero", {"n_epochs": 0}, ValueError, r"n_epochs must be a positive integer"),
    Bad("batch_size_one", {"batch_size": 1}, ValueError, r"batch_size must be an integer > 1"),
    Bad(
        "batch_larger_than_rollout",
        {"n_steps": 16, "batch_size": 64},
        ValueError,
        r"batch_size=64 is larger than the rollout \(n_steps \* n_envs = 16 \* 1 = 16\)",
    ),
    Bad("gamma_zero", {"gamma": 0.0}, ValueError, r"gamma \(the discount\) must lie in \(0, 1\]"),
    Bad("gamma_above_one", {"gamma": 1.5}, ValueError, r"gamma .* got 1.5"),
    Bad(
        "gae_lambda_above_one", {"gae_lambda": 1.2}, ValueError, r"gae_lambda must lie in \[0, 1\]"
    ),
    Bad("learning_rate_zero", {"learning_rate": 0.0}, ValueError, r"learning_rate must be > 0"),
    Bad("critic_lr_negative", {"critic_learning_rate": -1e-3}, ValueError, r"critic_learning_rate"),
    Bad("clip_range_zero", {"clip_range": 0.0}, ValueError, r"clip_range must be > 0"),
    Bad("target_kl_zero", {"target_kl": 0.0}, ValueError, r"target_kl must be > 0 or None"),
    Bad("critic_warmup_negative", {"critic_warmup_updates": -1}, ValueError, r"critic_warmup"),
    Bad("entropy_control_unknown", {"entropy_control": "clipcov"}, ValueError, r"entropy_control"),
    Bad("cov_fraction_above_one", {"cov_fraction": 2.0}, ValueError, r"cov_fraction must lie"),
    Bad("clip_cov_bounds_reversed", {"clip_cov_bounds": (5.0, 1.0)}, ValueError, r"lower < upper"),
    Bad("compile_unknown_mode", {"compile": "fastest"}, ValueError, r"compile must be True, False"),
]

# Policy arguments (policy_kwargs) of every flow policy.
POLICY_ARGS = [
    Bad("num_steps_zero", {"num_steps": 0}, ValueError, r"num_steps|K"),
    Bad("initial_std_negative", {"initial_std": -0.5}, ValueError, r"initial_std must be >= 0"),
    Bad("compile_not_a_mode", {"compile": "yes"}, ValueError, r"compile must be True, False"),
    Bad(
        "sigma_bounds_reversed",
        {"sigma_min": 0.5, "sigma_max": 0.1},
        ValueError,
        r"sigma_min <= sigma_max",
    ),
    Bad("pretrained_missing", {"pretrained": "MISSING"}, FileNotFoundError, r"no_such_bc\.pt"),
    Bad("pretrained_truncated", {"pretrained": "TRUNCATED"}, ValueError, r"truncated\.pt"),
    Bad("pretrained_other_action_box", {"pretrained": "OTHER_BOX"}, ValueError, r"action"),
    Bad("pretrained_nan_weights", {"pretrained": "NAN"}, ValueError, r"NaN|nan|finite"),
]

LEARN_ARGS = [
    Bad("total_timesteps_zero", {"total_timesteps": 0}, ValueError, r"total_timesteps must be"),
    Bad("total_timesteps_negative", {"total_timesteps": -10}, ValueError, r"total_timesteps must"),
    Bad("total_timesteps_float", {"total_timesteps": 1.5}, ValueError, r"total_timesteps must"),
]


def build(name: str, algo_change=None, policy_change=None, env=None):
    learner = LEARNERS[name]
    env = env if env is not None else make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    policy_kwargs = {**learner.policy_kwargs(2), **(policy_change or {})}
    algo = {"n_steps": 16, "batch_size": 8, "n_epochs": 1, **learner.algo_kwargs}
    algo.update(algo_change or {})
    return learner.cls(learner.alias, env, policy_kwargs=policy_kwargs, seed=0, **algo)


@pytest.mark.parametrize("bad", LEARNER_ARGS, ids=lambda b: b.name)
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_learner_arguments(learner, bad):
    with pytest.raises(bad.error, match=bad.match):
        build(learner, algo_change=bad.change)


def policy_file(kind: str, tmp_path: Path) -> str:
    """A pretrained-actor path of the given kind of damage."""
    if kind == "MISSING":
        return str(tmp_path / "no_such_bc.pt")
    actor = pendulum_actor()
    if kind == "TRUNCATED":
        actor.save(tmp_path / "whole.pt")
        data = (tmp_path / "whole.pt").read_bytes()
        (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
        return str(tmp_path / "truncated.pt")
    if kind == "OTHER_BOX":  # an actor made for actions in [-1, 1], Pendulum's box is [-2, 2]
        from flowrl.data import Normalizer

        actor.action_normalizer.load_state_dict(
            Normalizer.box(np.array([-1.0]), np.array([1.0])).state_dict()
        )
    if kind == "NAN":
        with torch.no_grad():
            actor.velocity_net.output.weight[0, 0] = float("nan")
    actor.save(tmp_path / f"{kind.lower()}.pt")
    return str(tmp_path / f"{kind.lower()}.pt")


@pytest.mark.parametrize("bad", POLICY_ARGS, ids=lambda b: b.name)
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_policy_arguments(learner, bad, tmp_path):
    learner = LEARNERS[learner]
    kwargs = {**learner.policy_kwargs(2), **bad.change}
    if "pretrained" in bad.change:
        kwargs["pretrained"] = policy_file(bad.change["pretrained"], tmp_path)
        kwargs.pop("actor_config")  # the actor comes from the file
    error, match = bad.error, bad.match
    if "sigma_min" in bad.change and not learner.noise_bounds:  # FPO: no noise to bound
        error, match = TypeError, r"unknown policy_kwargs \['sigma_max', 'sigma_min'\]"
    env = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    with pytest.raises(error, match=match):
        learner.cls(learner.alias, env, policy_kwargs=kwargs, n_steps=16, batch_size=8, seed=0)


@pytest.mark.parametrize("bad", LEARN_ARGS, ids=lambda b: b.name)
@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_learn_arguments(learner, bad):
    model = build(learner)
    with pytest.raises(bad.error, match=bad.match):
        model.learn(**bad.change)
    assert model.num_timesteps == 0  # nothing ran


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_a_batch_that_does_not_divide_the_rollout_warns_as_sb3_does(learner):
    with pytest.warns(UserWarning, match=r"batch_size=12 does not divide the rollout .* 4 rows"):
        build(learner, algo_change={"n_steps": 16, "batch_size": 12})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dividing batch is silent
        build(learner, algo_change={"n_steps": 16, "batch_size": 8})


# NFT's own arguments (DiffusionNFT's β, advantage clip and pairs per action).
NFT_ARGS = [
    Bad("beta_zero", {"beta": 0.0}, ValueError, r"beta must be a positive finite number"),
    Bad("beta_nan", {"beta": float("nan")}, ValueError, r"beta must be a positive finite"),
    Bad("clip_max_negative", {"clip_max": -1.0}, ValueError, r"clip_max must be a positive"),
    Bad("num_mc_zero", {"num_mc": 0}, ValueError, r"num_mc .* must be a positive int"),
    Bad("num_mc_float", {"num_mc": 2.5}, ValueError, r"num_mc .* must be a positive int"),
    Bad(
        "entropy_control_on",
        {"entropy_control": "clip_cov"},
        ValueError,
        r"entropy_control='clip_cov' acts on PPO's surrogate, which NFT replaces",
    ),
]


@pytest.mark.parametrize("bad", NFT_ARGS, ids=lambda b: b.name)
def test_nft_arguments(bad):
    with pytest.raises(bad.error, match=bad.match):
        build("nft", algo_change=bad.change)


# ---------------------------------------------------------------------- off-policy learners

# Constructor arguments of the replay-buffer learners (FlowSAC's checks).
OFF_POLICY_ARGS = [
    Bad("tau_zero", {"tau": 0.0}, ValueError, r"tau \(the Polyak coefficient\) must lie in"),
    Bad("tau_above_one", {"tau": 1.5}, ValueError, r"tau .* got 1.5"),
    Bad("gamma_zero", {"gamma": 0.0}, ValueError, r"gamma \(the discount\) must lie in \(0, 1\]"),
    Bad("batch_size_zero", {"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1"),
    Bad("buffer_size_zero", {"buffer_size": 0}, ValueError, r"buffer_size must be an integer"),
    Bad("learning_starts_negative", {"learning_starts": -1}, ValueError, r"learning_starts"),
    Bad("gradient_steps_zero", {"gradient_steps": 0}, ValueError, r"gradient_steps must be >= 1"),
    Bad("learning_rate_zero", {"learning_rate": 0.0}, ValueError, r"learning_rate must be > 0"),
    Bad("target_interval_zero", {"target_update_interval": 0}, ValueError, r"target_update"),
    Bad("ent_coef_word", {"ent_coef": "automatic"}, ValueError, r"ent_coef must be 'auto'"),
    Bad("ent_coef_auto_zero", {"ent_coef": "auto_0"}, ValueError, r"ent_coef must be 'auto'"),
    Bad("ent_coef_negative", {"ent_coef": -0.1}, ValueError, r"ent_coef must be >= 0"),
    Bad("target_entropy_word", {"target_entropy": "high"}, ValueError, r"target_entropy must be"),
    Bad("target_entropy_nan", {"target_entropy": float("nan")}, ValueError, r"finite"),
    Bad("bc_coef_negative", {"bc_coef": -1.0}, ValueError, r"bc_coef must be >= 0"),
    Bad("max_grad_norm_zero", {"max_grad_norm": 0.0}, ValueError, r"max_grad_norm must be > 0"),
    Bad("warmup_unknown", {"warmup": "random"}, ValueError, r"warmup must be one of"),
]

# The replay-buffer checks EDP shares with FlowSAC (it has no temperature, BC term or target
# update interval).
EDP_SHARED = {
    "tau",
    "gamma",
    "batch_size",
    "buffer_size",
    "learning_starts",
    "gradient_steps",
    "learning_rate",
    "max_grad_norm",
    "warmup",
}

OFF_POLICY_POLICY_ARGS = [
    *POLICY_ARGS,
    Bad("squash_unknown", {"squash": "sigmoid"}, ValueError, r"squash must be one of"),
    Bad("n_critics_zero", {"n_critics": 0}, ValueError, r"n_critics must be a positive integer"),
]


def build_flowsac(algo_change=None, policy_change=None):
    from flowrl.algos import FlowSAC

    policy_kwargs = dict(num_steps=2, actor_config=dict(width=16, depth=1), value_hidden=(16,))
    policy_kwargs.update(policy_change or {})
    return FlowSAC(
        "FlowSACPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs, seed=0, **(algo_change or {})
    )


@pytest.mark.parametrize("bad", OFF_POLICY_ARGS, ids=lambda b: b.name)
def test_flowsac_arguments(bad):
    with pytest.raises(bad.error, match=bad.match):
        build_flowsac(algo_change=bad.change)


@pytest.mark.parametrize("bad", OFF_POLICY_POLICY_ARGS, ids=lambda b: b.name)
def test_flowsac_policy_arguments(bad, tmp_path):
    change = dict(bad.change)
    if "pretrained" in change:
        change["pretrained"] = policy_file(change["pretrained"], tmp_path)
    with pytest.raises(bad.error, match=bad.match):
        if "pretrained" in change:  # the actor comes from the file
            from flowrl.algos import FlowSAC

            FlowSAC("FlowSACPolicy", "Pendulum-v1", policy_kwargs=change)
        else:
            build_flowsac(policy_change=change)


@pytest.mark.parametrize("bad", LEARN_ARGS, ids=lambda b: b.name)
def test_flowsac_learn_arguments(bad):
    model = build_flowsac()
    with pytest.raises(bad.error, match=bad.match):
        model.learn(**bad.change)
    assert model.num_timesteps == 0


# EDP: fine-tuning (its own options and the replay-buffer ones it shares), its policy, and the
# reward-free pretraining learners (EDPExplore, and the SAC baselines with RND/count bonuses).
EDP_ARGS = [
    *[bad for bad in OFF_POLICY_ARGS if next(iter(bad.change)) in EDP_SHARED],
    Bad("beta_zero", {"beta": 0.0}, ValueError, r"beta \(the temperature"),
    Bad("beta_inf", {"beta": float("inf")}, ValueError, r"beta \(the temperature"),
    Bad("num_candidates_zero", {"num_candidates": 0}, ValueError, r"num_candidates must be"),
    Bad("expectile_one", {"expectile": 1.0}, ValueError, r"expectile must lie in \(0, 1\)"),
    Bad("distill_interval_zero", {"distill_interval": 0}, ValueError, r"distill_interval must"),
    Bad("distill_batch_zero", {"distill_batch_size": 0}, ValueError, r"distill_batch_size must"),
    Bad("critic_warmup_negative", {"critic_warmup_steps": -1}, ValueError, r"critic_warmup"),
]

EDP_POLICY_ARGS = [
    *[bad for bad in POLICY_ARGS if "sigma_min" not in bad.change],  # EDPPolicy has no σ
    Bad("n_critics_zero", {"n_critics": 0}, ValueError, r"n_critics must be a positive integer"),
    Bad("sigma_bounds", {"sigma_min": 0.1}, TypeError, r"unknown policy_kwargs \['sigma_min'\]"),
]

EXPLORE_ARGS = [
    Bad("intrinsic_scale_zero", {"intrinsic_scale": 0.0}, ValueError, r"intrinsic_scale must"),
    Bad("novelty_updates_zero", {"novelty_updates": 0}, ValueError, r"novelty_updates must"),
    Bad("actor_updates_negative", {"actor_updates": -1}, ValueError, r"actor_updates must"),
    Bad("actor_lr_zero", {"actor_learning_rate": 0.0}, ValueError, r"actor_learning_rate must"),
    Bad("num_draws_zero", {"intrinsic_kwargs": {"num_draws": 0}}, ValueError, r"num_draws must"),
    Bad("novelty_option", {"intrinsic_kwargs": {"bins": 3}}, TypeError, r"bins"),
]


def build_edp(algo_change=None, policy_change=None):
    from flowrl.algos import EDP

    policy_kwargs = dict(pretrained=pendulum_actor(), value_hidden=(16,))
    policy_kwargs.update(policy_change or {})
    if policy_kwargs["pretrained"] is None:
        policy_kwargs.pop("pretrained")
    return EDP(
        "EDPPolicy", "Pendulum-v1", policy_kwargs=policy_kwargs, seed=0, **(algo_change or {})
    )


@pytest.mark.parametrize("bad", EDP_ARGS, ids=lambda b: b.name)
def test_edp_arguments(bad):
    with pytest.raises(bad.error, match=bad.match):
        build_edp(algo_change=bad.change)


@pytest.mark.parametrize("bad", EDP_POLICY_ARGS, ids=lambda b: b.name)
def test_edp_policy_arguments(bad, tmp_path):
    change = dict(bad.change)
    if "pretrained" in change:
        change["pretrained"] = policy_file(change["pretrained"], tmp_path)
    with pytest.raises(bad.error, match=bad.match):
        build_edp(policy_change={"pretrained": None, **change})


@pytest.mark.parametrize("bad", LEARN_ARGS, ids=lambda b: b.name)
@pytest.mark.parametrize("learner", ["EDP", "EDPExplore", "ExplorationSAC"])
def test_edp_learn_arguments(bad, learner):
    from flowrl.algos import EDPExplore, ExplorationSAC

    if learner == "EDP":
        model = build_edp()
    elif learner == "EDPExplore":
        model = EDPExplore("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16]))
    else:
        model = ExplorationSAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16]))
    with pytest.raises(bad.error, match=bad.match):
        model.learn(**bad.change)
    assert model.num_timesteps == 0


@pytest.mark.parametrize("bad", EXPLORE_ARGS, ids=lambda b: b.name)
def test_edp_explore_arguments(bad):
    from flowrl.algos import EDPExplore

    with pytest.raises(bad.error, match=bad.match):
        EDPExplore("MlpPolicy", "Pendulum-v1", **bad.change)


def test_exploration_refuses_an_unknown_bonus_and_dict_observations():
    from flowrl.algos import ExplorationSAC

    with pytest.raises(ValueError, match=r"unknown intrinsic reward 'icm'; choose one of"):
        ExplorationSAC("MlpPolicy", "Pendulum-v1", intrinsic="icm")


def test_flowsac_refuses_discrete_actions_and_image_observations():
    from flowrl.algos import FlowSAC

    with pytest.raises(ValueError, match=r"continuous 1-D Box action space"):
        FlowSAC("FlowSACPolicy", "CartPole-v1")


# ---------------------------------------------------------------------- the pipeline

TINY = [
    "env=pendulum",
    "total_timesteps=256",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "progress_bar=false",
]

PIPELINE = [
    Bad(
        "total_timesteps_zero",
        {"over": ["total_timesteps=0"]},
        ValueError,
        r"total_timesteps must be >= 1, got 0",
    ),
    Bad("n_envs_zero", {"over": ["n_envs=0"]}, ValueError, r"n_envs must be >= 1"),
    Bad("env_n_envs_zero", {"over": ["env.n_envs=0"]}, ValueError, r"env.n_envs must be >= 1"),
    Bad("threads_zero", {"over": ["threads=0"]}, ValueError, r"threads must be >= 1"),
    Bad("eval_freq_zero", {"over": ["eval.freq=0"]}, ValueError, r"eval.freq must be >= 1"),
    Bad("eval_episodes_zero", {"over": ["eval.episodes=0"]}, ValueError, r"eval.episodes must"),
    Bad("gamma_above_one", {"over": ["algo.gamma=1.01"]}, ValueError, r"algo.gamma .* \(0, 1\]"),
    Bad(
        "checkpoint_negative",
        {"over": ["checkpoint.finetune_steps=-1"]},
        ValueError,
        r"checkpoint.finetune_steps",
    ),
    Bad(
        "bc_checkpoint_negative",
        {"over": ["checkpoint.bc_steps=-5"]},
        ValueError,
        r"checkpoint.bc_steps",
    ),
    Bad(
        "plus_algo_misspelled",
        {"over": ["+algo.lerning_rate=0.1"]},
        ValueError,
        r"algo.lerning_rate is not an option of ReinFlowConfig: did you mean algo.learning_rate",
    ),
    Bad(
        "plus_policy_misspelled",
        {"over": ["+policy.sigma_mx=0.3"]},
        ValueError,
        r"policy.sigma_mx is not an option of FlowPolicyConfig: did you mean policy.sigma_max",
    ),
    Bad(
        "plus_env_unknown",
        {"over": ["+env.frameskip=4"]},
        ValueError,
        r"env.frameskip is not an option of EnvConfig",
    ),
    Bad(
        "plus_top_level_unknown",
        {"over": ["+total_steps=4"]},
        ValueError,
        r"total_steps is not an option of TrainConfig: did you mean total_timesteps",
    ),
    Bad("stages_reversed", {"over": ["stages=[bc,dataset]"]}, ValueError, r"in that order"),
    Bad(
        "pretrained_missing",
        {"over": ["pretrained=/nonexistent/bc.pt"]},
        FileNotFoundError,
        r"/nonexistent/bc.pt",
    ),
    Bad(
        "ppo_n_steps_zero",
        {"over": ["algo=ppo", "algo.n_steps=0"]},
        ValueError,
        r"n_steps must be a positive",
    ),
    Bad(
        "ppo_batch_larger_than_rollout",
        {"over": ["algo=ppo", "algo.batch_size=128"]},
        ValueError,
        r"batch_size=128 is larger than the rollout",
    ),
    Bad(
        "ppo_n_epochs_zero", {"over": ["algo=ppo", "algo.n_epochs=0"]}, ValueError, r"n_epochs must"
    ),
    Bad(
        "reinflow_batch_of_one",
        {"over": ["algo.batch_size=1"]},
        ValueError,
        r"batch_size must be an integer > 1",
    ),
    Bad(
        "policyflow_n_steps_zero",
        {"over": ["algo=policyflow", "algo.n_steps=0"]},
        ValueError,
        r"n_steps must",
    ),
]


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("bad", PIPELINE, ids=lambda b: b.name)
def test_pipeline_arguments(bad, tmp_path):
    out = tmp_path / "run"
    cfg = compose_cfg(*TINY, *bad.change["over"], f"output_dir={out}")
    with pytest.raises(bad.error, match=bad.match):
        TRAIN.train(cfg)
    assert not (out / "results.json").exists()  # nothing was written as if it had worked


# ---------------------------------------------------------------------- damaged files


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def dataset(rows=64, seed=0):
    rng = np.random.default_rng(seed)
    return OfflineDataset(
        observations=rng.normal(size=(rows, 3)).astype(np.float32),
        actions=rng.uniform(-2, 2, size=(rows, 1)).astype(np.float32),
    )


def damaged_model_zip(tmp: Path) -> Callable[[], Any]:
    model = build("reinflow")
    model.save(tmp / "model.zip")
    truncate(tmp / "model.zip")
    return lambda: LEARNERS["reinflow"].cls.load(tmp / "model.zip")


def missing_model_zip(tmp: Path) -> Callable[[], Any]:
    return lambda: LEARNERS["reinflow"].cls.load(tmp / "model")


def reinflow_zip_into_ppo(tmp: Path) -> Callable[[], Any]:
    from stable_baselines3 import PPO

    build("reinflow").save(tmp / "model.zip")
    return lambda: PPO.load(tmp / "model.zip")


def truncated_npz(tmp: Path) -> Callable[[], Any]:
    dataset().save_npz(tmp / "data.npz")
    truncate(tmp / "data.npz")
    return lambda: OfflineDataset.load_npz(tmp / "data.npz")


def garbage_npz(tmp: Path) -> Callable[[], Any]:
    (tmp / "data.npz").write_bytes(b"not a dataset at all")
    return lambda: OfflineDataset.load_npz(tmp / "data.npz")


def npz_missing_actions(tmp: Path) -> Callable[[], Any]:
    np.savez(tmp / "data.npz", observations=np.zeros((4, 3), np.float32))
    return lambda: OfflineDataset.load_npz(tmp / "data.npz")


def bc_checkpoint_other_dataset(tmp: Path) -> Callable[[], Any]:
    bc = FlowBC.from_dataset(
        dataset(seed=0), actor_config={"width": 16, "depth": 1}, config=BCConfig(steps=2)
    )
    bc.learn(progress_bar=False, checkpoint_path=tmp / "trainer.ckpt")
    return lambda: FlowBC.load_checkpoint(tmp / "trainer.ckpt", dataset(seed=1))


def truncated_bc_checkpoint(tmp: Path) -> Callable[[], Any]:
    bc = FlowBC.from_dataset(
        dataset(), actor_config={"width": 16, "depth": 1}, config=BCConfig(steps=2)
    )
    bc.learn(progress_bar=False, checkpoint_path=tmp / "trainer.ckpt")
    truncate(tmp / "trainer.ckpt")
    return lambda: FlowBC.load_checkpoint(tmp / "trainer.ckpt", dataset())


def truncated_actor(tmp: Path) -> Callable[[], Any]:
    from flowrl.policies import FlowActor

    pendulum_actor().save(tmp / "bc.pt")
    truncate(tmp / "bc.pt")
    return lambda: FlowActor.load(tmp / "bc.pt")


def truncated_results_json(tmp: Path) -> Callable[[], Any]:
    out = tmp / "run"
    out.mkdir()
    (out / "results.json").write_text('{"config": {"algo": {"name": "rein')
    cfg = compose_cfg(*TINY, f"output_dir={out}")
    return lambda: TRAIN.train(cfg)


def truncated_run_checkpoint(tmp: Path) -> Callable[[], Any]:
    out = tmp / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")
    cfg = compose_cfg(*TINY, f"output_dir={out}")
    return lambda: TRAIN.train(cfg)


FILES = [
    (
        "model_zip_truncated",
        damaged_model_zip,
        ValueError,
        r"model.zip is not a readable ReinFlow checkpoint: the file is damaged or truncated",
    ),
    (
        "model_zip_missing",
        missing_model_zip,
        FileNotFoundError,
        r"no ReinFlow checkpoint at .*model",
    ),
    ("reinflow_zip_loaded_by_ppo", reinflow_zip_into_ppo, ValueError, r"load .* with .*ReinFlow"),
    ("npz_truncated", truncated_npz, ValueError, r"data.npz is not .*(damaged|truncated)"),
    ("npz_garbage", garbage_npz, ValueError, r"data.npz is not an .npz archive"),
    ("npz_missing_actions", npz_missing_actions, KeyError, r"data.npz.*actions"),
    (
        "bc_checkpoint_other_dataset",
        bc_checkpoint_other_dataset,
        ValueError,
        r"trainer.ckpt' was trained on another dataset",
    ),
    (
        "bc_checkpoint_truncated",
        truncated_bc_checkpoint,
        ValueError,
        r"trainer.ckpt' is not a readable BC trainer checkpoint",
    ),
    ("actor_truncated", truncated_actor, ValueError, r"bc.pt"),
    ("results_json_truncated", truncated_results_json, ValueError, r"results.json is damaged"),
    (
        "run_checkpoint_truncated",
        truncated_run_checkpoint,
        ValueError,
        r"checkpoint.pt' is not a readable flowrl training checkpoint",
    ),
]


@pytest.mark.parametrize("make, error, match", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
def test_damaged_files(make, error, match, tmp_path):
    load = make(tmp_path)
    with pytest.raises(error, match=match):
        load()


def test_a_run_checkpoint_of_another_config_is_refused(tmp_path):
    out = tmp_path / "run"
    cfg = compose_cfg(*TINY, f"output_dir={out}")
    model = TRAIN.build_model(
        TRAIN.as_train_config(cfg), make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    )
    from flowrl.checkpoints import atomic_save, training_state

    config = TRAIN.config_dict(TRAIN.as_train_config(cfg))
    config["algo"]["learning_rate"] = 0.123
    atomic_save(training_state(model, {"config": config, "curve": {}}), out / "checkpoint.pt")
    with pytest.raises(
        ValueError,
        match=r"checkpoint.pt is a checkpoint of another config \(differs in: algo.learning_rate\)",
    ):
        TRAIN.train(cfg)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_a_last_minibatch_of_one_row_trains_without_nan(learner):
    # 17 rows in minibatches of 8: 8, 8, 1. Advantages of one row are not standardised
    # (their std is undefined), as in SB3's PPO, so the update stays finite.
    with pytest.warns(UserWarning, match="truncated minibatch of 1 rows"):
        model = build(learner, algo_change={"n_steps": 17, "batch_size": 8, "n_epochs": 2})
    model.learn(34)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_a_second_process_on_the_same_run_folder_is_refused(tmp_path):

    out = tmp_path / "run"
    cfg = compose_cfg(*TINY, f"output_dir={out}")
    busy = pytest.raises(RuntimeError, match=r"run is in use by another run \(pid \d+\)")
    with pretrain.folder_lock(out, wait=False), busy:  # as another run holding the folder
        TRAIN.train(cfg)
    assert not (out / "results.json").exists()
