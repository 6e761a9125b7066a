"""experiments/train.py: every config builds, typos fail clearly, runs finish and resume."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from stable_baselines3.sac.policies import SACPolicy

from flowrl.algos import DPPO, DSRL, EDP, FPO, NFT, FlowSAC, PolicyFlow, ReinFlow
from flowrl.algos.dsrl import LatentSACPolicy
from flowrl.data import Normalizer
from flowrl.policies import (
    DiffusionActor,
    DiffusionPolicy,
    EDPPolicy,
    FlowActor,
    FlowActorConfig,
    FlowPolicy,
    FlowSACPolicy,
    FPOPolicy,
    PolicyFlowPolicy,
)

ROOT = Path(__file__).resolve().parents[2]


TRAIN = importlib.import_module("flowrl.experiments.train")
data_file = importlib.import_module("flowrl.experiments.pretrain").data_file

ALGOS = {
    "reinflow": (ReinFlow, FlowPolicy),
    "policyflow": (PolicyFlow, PolicyFlowPolicy),
    "fpo": (FPO, FPOPolicy),
    "fpo_pp": (FPO, FPOPolicy),
    "nft": (NFT, FPOPolicy),
    "dppo": (DPPO, DiffusionPolicy),
    "ppo": (PPO, ActorCriticPolicy),
    "sac": (SAC, SACPolicy),
    "flowsac": (FlowSAC, FlowSACPolicy),
    "dsrl": (DSRL, LatentSACPolicy),
    "edp": (EDP, EDPPolicy),
}
ENVS = sorted(path.stem for path in (ROOT / "configs" / "env").glob("*.yaml"))
# Small enough that building costs nothing; SAC would otherwise reserve 1M transitions.
CHEAP = {name: ["algo.buffer_size=1000"] for name in ("sac", "flowsac", "dsrl", "edp")}
# Learners that start from a pretrained flow (pretrained=): DSRL steers it, EDP distils from it.
NEEDS_FLOW = ("dsrl", "edp")
MAZES = ("pointmaze_umaze", "pointmaze_medium", "pointmaze_large")

TINY_REINFLOW = [
    "algo=reinflow",
    "env=pendulum",
    "env.max_episode_steps=50",
    "total_timesteps=512",
    "algo.n_steps=64",
    "algo.batch_size=32",
    "algo.n_epochs=1",
    "policy.num_steps=2",
    "policy.actor.width=16",
    "policy.actor.depth=1",
    "policy.noise_hidden=[8]",
    "policy.value_hidden=[16]",
    "eval.freq=256",
    "eval.episodes=2",
    "progress_bar=false",
    # a fresh actor even where a BC actor lies in the default pretrain_dir (outputs/pretrain/…)
    "from_scratch=true",
]


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_env_groups_cover_the_design():
    expected = {"pendulum", "multigoal", "hopper", "walker2d", "halfcheetah", "ant"}
    assert expected | {"humanoid", "inverted_pendulum", *MAZES} == set(ENVS)
    assert {path.stem for path in (ROOT / "configs" / "algo").glob("*.yaml")} == set(ALGOS)


@pytest.mark.parametrize("env", ENVS)
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_every_algo_builds_on_every_env(algo, env, tmp_path):
    if env in MAZES:
        pytest.importorskip("gymnasium_robotics")
    overrides = [f"algo={algo}", f"env={env}", *CHEAP.get(algo, [])]
    if algo in NEEDS_FLOW:  # DSRL steers a BC flow, EDP distils from it: a small one
        raw = TRAIN.as_train_config(config(f"env={env}"))
        spec = TRAIN.make_vec_env_from_config(raw.env, 1, 0, 0.99)
        low, high = spec.action_space.low, spec.action_space.high
        obs_dim, action_dim = spec.observation_space.shape[0], spec.action_space.shape[0]
        spec.close()
        FlowActor(
            FlowActorConfig(obs_dim=obs_dim, action_dim=action_dim, width=16, depth=1),
            Normalizer.identity(obs_dim),
            Normalizer.box(low, high),
        ).save(tmp_path / "bc.pt")
        overrides.append(f"pretrained={tmp_path / 'bc.pt'}")
    cfg = TRAIN.as_train_config(config(*overrides))
    algo_class, policy_class = ALGOS[algo]
    # No policy named: each algo brings its natural one.
    natural = {"reinflow": "flow", "policyflow": "policyflow", "fpo": "fpo", "fpo_pp": "fpo"}
    natural["nft"] = "fpo"
    natural.update(dppo="diffusion", flowsac="flowsac", dsrl="dsrl", edp="edp")
    assert cfg.policy.kind == natural.get(algo, "gaussian")
    assert cfg.output_dir == f"outputs/train/{algo}/{env}/seed0"
    venv = TRAIN.make_vec_env_from_config(cfg.env, 1, cfg.seed, cfg.algo.gamma)
    try:
        model = TRAIN.build_model(cfg, venv)
        assert type(model) is algo_class and isinstance(model.policy, policy_class)
        assert model.gamma == cfg.algo.gamma and model.seed == 0
        assert model.tensorboard_log == str(Path(cfg.output_dir) / "tb")
        assert isinstance(venv, VecNormalize) == cfg.env.norm_reward
        action, _ = model.predict(venv.reset(), deterministic=True)
        space = venv.action_space
        assert action.shape == (1, *space.shape)
        assert np.all(action >= space.low) and np.all(action <= space.high)
    finally:
        venv.close()


def test_hyperparameters_and_policy_fields_reach_the_model():
    cfg = config(
        "algo.n_steps=32",
        "algo.batch_size=16",
        "algo.critic_learning_rate=0.005",
        "algo.sigma_max_final=0.15",
        "policy.num_steps=3",
        "policy.sigma_max=0.3",
        "policy.actor.width=24",
        "policy.value_hidden=[8]",
    )
    venv = TRAIN.make_vec_env_from_config(cfg.env)
    model = TRAIN.build_model(cfg, venv)
    assert (model.n_steps, model.critic_learning_rate, model.sigma_max_final) == (32, 0.005, 0.15)
    assert model.policy.num_steps == 3 and float(model.policy.sigma_max) == pytest.approx(0.3)
    assert model.policy.actor.config.width == 24 and model.policy.value_hidden == (8,)

    cfg = config(
        "algo=policyflow",
        "algo.brownian_coef=0.2",
        "algo.ratio_estimator=grid",
        "algo.entropy_control=kl_cov",
        "algo.cov_fraction=0.05",
        "policy.num_steps=2",
        "policy.sigma_init=0.2",
        "policy.state_dependent_std=true",
        "policy.initial_std=0.5",
    )
    model = TRAIN.build_model(cfg, venv)
    assert (model.brownian_coef, model.ratio_estimator) == (0.2, "grid")
    assert (model.entropy_control, model.cov_fraction) == ("kl_cov", 0.05)
    assert model.policy.num_steps == 2 and model.policy.sigma_init == 0.2
    assert model.policy.state_dependent_std and model.policy.initial_std == 0.5

    cfg = config("algo=ppo", "policy.net_arch=[16]", "policy.activation_fn=ReLU")
    model = TRAIN.build_model(cfg, venv)
    assert model.policy.net_arch == [16] and model.policy.activation_fn is torch.nn.ReLU
    with pytest.raises(ValueError, match="not a torch.nn module"):
        TRAIN.build_model(config("algo=ppo", "policy.activation_fn=Relu"), venv)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.n_step=5"], "Key 'n_step' not in 'ReinFlowConfig'"),
        (["algo=ppo", "algo.bc_coef=0.1"], "Key 'bc_coef' not in 'PPOConfig'"),
        (["policy.num_step=2"], "Key 'num_step' not in 'FlowPolicyConfig'"),
        (["algo=policyflow", "algo.brownian=0.1"], "Key 'brownian' not in 'PolicyFlowConfig'"),
        (["algo=policyflow", "policy.noise_hidden=[8]"], "not in 'PolicyFlowPolicyConfig'"),
        (["algo=sac", "policy.num_steps=2"], "Key 'num_steps' not in 'GaussianPolicyConfig'"),
        (["algo=edp", "algo.ent_coef=0.1"], "Key 'ent_coef' not in 'EDPConfig'"),
        (["algo=edp", "algo.target_entropy=0"], "Key 'target_entropy' not in 'EDPConfig'"),
        (["algo=edp", "policy.sigma_min=0.1"], "Key 'sigma_min' not in 'EDPPolicyConfig'"),
        (["explore.num_steps=2"], "Key 'num_steps' not in 'ExploreStageConfig'"),
        (["env.max_steps=5"], "Key 'max_steps' not in 'EnvConfig'"),
        (["eval.episode=3"], "Key 'episode' not in 'EvalConfig'"),
        (["seeds=1"], "Key 'seeds' not in 'TrainConfig'"),
    ],
)
def test_key_typos_fail_with_the_schema(overrides, message):
    with pytest.raises(ConfigCompositionException) as error:
        config(*overrides)
    assert message in str(error.value.__cause__ or error.value)


@pytest.mark.parametrize(
    ("group", "typo", "valid"), [("env", "hoper", "hopper"), ("algo", "reinflw", "reinflow")]
)
def test_option_typos_list_the_options(group, typo, valid):
    with pytest.raises(MissingConfigException) as error:
        config(f"{group}={typo}")
    text = str(error.value)
    assert f"Could not find '{group}/{typo}'" in text and f"\t{valid}\n" in text
    assert "schema" not in text.split("Config search path")[0]  # schemas are not options
    with pytest.raises(MissingConfigException, match="experiment/nope"):
        config("experiment=nope")


@pytest.mark.parametrize(
    ("overrides", "valid"),
    [
        (["algo=ppo", "policy=flow"], "policy=gaussian"),
        (["algo=sac", "policy=flow"], "policy=gaussian"),
        (["algo=reinflow", "policy=gaussian"], "policy=flow"),
        (["algo=reinflow", "policy=policyflow"], "policy=flow"),
        (["algo=policyflow", "policy=flow"], "policy=policyflow"),
        (["algo=edp", "policy=flowsac"], "policy=edp"),
        (["algo=flowsac", "policy=edp"], "policy=flowsac"),
        (["algo=sac", "policy=edp"], "policy=gaussian"),
    ],
)
def test_policy_the_algo_does_not_take_is_refused(overrides, valid, tmp_path):
    cfg = config(*overrides, f"output_dir={tmp_path / 'run'}")
    venv = TRAIN.make_vec_env_from_config(cfg.env)
    with pytest.raises(ValueError, match=f"takes {valid}, got policy="):
        TRAIN.build_model(cfg, venv)
    with pytest.raises(ValueError, match=f"takes {valid}"):
        TRAIN.train(cfg)
    assert not (tmp_path / "run").exists()


def _save_actor(path, width=16):
    actor = FlowActor(
        FlowActorConfig(obs_dim=3, action_dim=1, width=width, depth=1, num_steps=3),
        Normalizer.identity(3),
        Normalizer.box(np.array([-2.0]), np.array([2.0])),
    )
    actor.save(path)
    return actor


def test_pretrained_checkpoint_starts_the_flow_policy(tmp_path):
    actor = _save_actor(tmp_path / "bc.pt")
    venv = TRAIN.make_vec_env_from_config(config().env)
    model = TRAIN.build_model(config(f"pretrained={tmp_path / 'bc.pt'}"), venv)
    assert model.policy.num_steps == 3  # num_steps null: the checkpoint's K
    assert model.policy.actor.config.width == 16  # policy.actor is ignored with a checkpoint
    for key, value in actor.state_dict().items():
        assert torch.equal(model.policy.actor.state_dict()[key], value), key

    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        TRAIN.build_model(config(f"pretrained={tmp_path / 'missing.pt'}"), venv)
    with pytest.raises(ValueError, match="only flow policies load"):
        TRAIN.build_model(config("algo=ppo", f"pretrained={tmp_path / 'bc.pt'}"), venv)


def test_edp_config_builds_edp_from_a_pretrained_flow(tmp_path):
    actor = _save_actor(tmp_path / "prior.pt")
    cfg = TRAIN.compose_config(
        "algo=edp",
        "env=pendulum",
        f"pretrained={tmp_path / 'prior.pt'}",
        "algo.buffer_size=1000",
        "algo.beta=0.2",
        "algo.num_candidates=4",
        "algo.expectile=0.7",
        "algo.distill_batch_size=8",
        "policy.n_critics=3",
        "policy.critic_layer_norm=true",
        "policy.value_hidden=[8]",
    )
    assert (type(cfg.algo).__name__, type(cfg.policy).__name__) == ("EDPConfig", "EDPPolicyConfig")
    # EDP's own options, none of SAC's (EDP would refuse them)
    params = cfg.algo.hyperparameters()
    assert not {"ent_coef", "target_entropy", "target_update_interval", "use_sde"} & set(params)
    assert params["learning_starts"] == 1000 and params["warmup"] == "auto"  # EDP's defaults
    venv = TRAIN.make_vec_env_from_config(cfg.env)
    model = TRAIN.build_model(cfg, venv)
    assert type(model) is EDP and isinstance(model.policy, EDPPolicy)
    assert (model.beta, model.num_candidates, model.expectile) == (0.2, 4, 0.7)
    assert model.distill_batch_size == 8 and model.warmup == "policy"  # pretrained: π_pre acts
    policy = model.policy
    assert policy.n_critics == 3 and len(policy.critic) == 3 and policy.critic_layer_norm
    assert policy.initial_std == 1.0 and policy.value_hidden == (8,) and policy.num_steps == 3
    for key, value in actor.state_dict().items():  # actor and frozen reference: the checkpoint's
        assert torch.equal(policy.actor.state_dict()[key], value), key
        assert torch.equal(policy.reference.state_dict()[key], value), key

    # Without a pretrained flow: refused clearly; from_scratch=true: a fresh EDPPolicy.
    with pytest.raises(ValueError, match="algo=edp fine-tunes a pretrained flow"):
        TRAIN.build_model(TRAIN.compose_config("algo=edp", "env=pendulum"), venv)
    cfg = TRAIN.compose_config(
        "algo=edp", "from_scratch=true", "algo.buffer_size=1000", "policy.actor.width=24"
    )
    model = TRAIN.build_model(cfg, venv)
    assert model.policy.actor.config.width == 24 and model.warmup == "uniform"
    assert TRAIN.compose_config("algo=edp").policy.kind == "edp"  # its natural policy


@pytest.mark.parametrize("algo", ["fpo", "fpo_pp", "nft", "dppo"])
def test_tiny_fpo_and_dppo_runs_from_a_bc_checkpoint(algo, tmp_path):
    """The baselines of the head-to-head run through the pipeline from one flow bc.pt."""
    _save_actor(tmp_path / "bc.pt")
    tiny = [o for o in TINY_REINFLOW if not o.startswith(("algo=", "policy.", "from_scratch"))]
    out = tmp_path / algo
    overrides = [f"algo={algo}", *tiny, f"pretrained={tmp_path / 'bc.pt'}", f"output_dir={out}"]
    if algo == "dppo":
        overrides.append("policy.ft_denoising_steps=2")
    results = TRAIN.train(config(*overrides))
    assert results["config"]["algo"]["name"] == algo and results["env_steps"] == 512
    cls, policy_cls = ALGOS[algo]
    model = cls.load(out / "model.zip")
    assert isinstance(model.policy, policy_cls) and model.policy.num_steps == 3
    if algo == "fpo_pp":
        assert model.per_pair_ratios and model.asymmetric_trust_region
    if algo == "dppo":  # the flow bc.pt, read as a noise predictor; 2 of its 3 steps tuned
        assert model.policy.prediction == "velocity" and model.policy.ft_denoising_steps == 2


def test_bc_stage_makes_a_diffusion_actor_for_dppo(tmp_path):
    from flowrl.data import OfflineDataset

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((256, 3)).astype(np.float32)
    OfflineDataset(
        observations=obs,
        actions=np.tanh(obs[:, :1]).astype(np.float32),
        rewards=-np.ones(256, np.float32),
        terminals=np.zeros(256, bool),
        timeouts=(np.arange(256) % 64 == 63),
    ).save_npz(tmp_path / "d.npz")
    tiny = [o for o in TINY_REINFLOW if not o.startswith(("algo=", "policy.", "from_scratch"))]
    overrides = [
        "algo=dppo",
        *tiny,
        "stages=[bc,finetune]",
        f"dataset.path={tmp_path / 'd.npz'}",
        "bc.kind=diffusion",
        "bc.train.steps=20",
        "bc.train.batch_size=32",
        "bc.actor={width: 16, depth: 1, num_steps: 2}",
        f"pretrain_dir={tmp_path / 'pre'}",
        f"output_dir={tmp_path / 'run'}",
    ]
    TRAIN.train(config(*overrides))
    assert type(DiffusionActor.load(tmp_path / "pre" / "bc" / "bc.pt")) is DiffusionActor
    model = DPPO.load(tmp_path / "run" / "model.zip")
    assert model.policy.prediction == "epsilon"
    with pytest.raises(ValueError, match="bc.kind must be one of"):
        TRAIN.train(config(*overrides, "bc.kind=gaussian", f"output_dir={tmp_path / 'r2'}"))
    assert not (tmp_path / "r2").exists()  # refused before anything was written


def test_experiment_bundles_compose():
    cfg = TRAIN.as_train_config(config("experiment=pendulum_quick", "seed=3"))
    assert (cfg.algo.name, cfg.policy.kind, cfg.env.id) == ("reinflow", "flow", "Pendulum-v1")
    assert cfg.policy.num_steps == 2 and cfg.algo.n_steps == 256
    assert cfg.output_dir == "outputs/train/pendulum_quick/seed3"
    cfg = TRAIN.as_train_config(config("experiment=main"))
    assert (cfg.env.id, cfg.n_envs, cfg.algo.critic_warmup_updates) == ("Hopper-v5", 4, 5)
    assert cfg.stages == ["bc", "finetune"] and cfg.output_dir == "outputs/main"
    assert data_file(cfg.dataset.path).is_file()  # the shipped dataset, found in the package

    # The recipe the README measures (configs/recipe/reinflow_mujoco.yaml): a width-128 BC
    # actor, narrower noise bounds than FlowPolicy's, small steps, a long horizon; both bundles
    # take it.
    def recipe(cfg):
        return (
            cfg.bc.actor["width"],
            cfg.n_envs,
            cfg.algo.n_steps,
            cfg.policy.sigma_min,
            cfg.policy.sigma_max,
            cfg.algo.learning_rate,
            cfg.algo.target_kl,
            cfg.algo.gamma,
            cfg.algo.gae_lambda,
        )

    assert recipe(cfg) == (128, 4, 512, 0.05, 0.12, 1e-4, 0.01, 0.999, 0.99)
    for env in ("hopper", "walker2d", "halfcheetah", "ant"):
        cfg = TRAIN.as_train_config(config("experiment=pipeline_medium", f"env={env}", "seed=2"))
        assert cfg.stages == ["dataset", "bc", "finetune"] and cfg.algo.name == "reinflow"
        assert cfg.output_dir == f"outputs/pipeline/{env}_medium/reinflow/seed2"
        assert cfg.pretrain_dir == f"outputs/pretrain/{env}/medium_seed0"  # shared by seeds
        assert recipe(cfg) == (128, 4, 512, 0.05, 0.12, 1e-4, 0.01, 0.999, 0.99)
    # The README's Hopper 1M table: the recipe with gamma 0.995, on the shipped dataset.
    cfg = TRAIN.as_train_config(config("experiment=hopper_medium_1m", "seed=3"))
    assert (cfg.env.id, cfg.stages, cfg.total_timesteps) == ("Hopper-v5", ["bc", "finetune"], 10**6)
    assert data_file(cfg.dataset.path).is_file() and cfg.eval.freq == 50_000
    assert recipe(cfg) == (128, 4, 512, 0.05, 0.12, 1e-4, 0.01, 0.995, 0.99)
    assert cfg.output_dir == "outputs/hopper_medium_1m/reinflow/seed3"
    # PolicyFlow's row of that table: the same BC actor (pretrain_dir) and PPO settings.
    cfg = TRAIN.as_train_config(config("experiment=hopper_medium_1m_policyflow", "seed=3"))
    assert (cfg.algo.name, cfg.policy.kind, cfg.total_timesteps) == (
        "policyflow",
        "policyflow",
        10**6,
    )
    assert recipe(cfg)[:3] + recipe(cfg)[5:] == (128, 4, 512, 1e-4, 0.01, 0.995, 0.99)
    assert (cfg.policy.initial_std, cfg.policy.sigma_init) == (0.0, 0.1)
    assert cfg.pretrain_dir == "outputs/hopper_medium_1m/pretrain"
    assert cfg.output_dir == "outputs/hopper_medium_1m/policyflow/seed3"
    # The recipe alone, on any run; the command line still wins over it.
    cfg = TRAIN.as_train_config(config("+recipe=reinflow_mujoco", "env=walker2d", "n_envs=8"))
    assert recipe(cfg) == (128, 8, 512, 0.05, 0.12, 1e-4, 0.01, 0.999, 0.99)


@pytest.mark.parametrize("maze", ["UMaze", "Medium", "Large"])
def test_maze_env_configs_make_the_goal_task(maze):
    pytest.importorskip("gymnasium_robotics")
    name = f"pointmaze_{maze.lower()}"
    env = TRAIN.compose_config(f"env={name}").env
    assert (env.name, env.id) == (name, f"flowrl.envs:flowrl/PointMazeGoal-{maze}-v0")
    assert not env.norm_reward and not env.norm_obs
    venv = TRAIN.make_vec_env_from_config(env, 1, 0)
    try:
        assert isinstance(venv, DummyVecEnv)  # no VecNormalize: sparse 0/1 rewards as they are
        assert venv.observation_space.shape == (4,) and venv.action_space.shape == (2,)
        venv.reset()
        _, rewards, _, infos = venv.step(np.zeros((1, 2), np.float32))
        assert "is_success" in infos[0] and "xy" in infos[0] and rewards[0] in (0.0, 1.0)
    finally:
        venv.close()


def test_maze_edp_bundle_composes():
    cfg = TRAIN.compose_config("experiment=maze_edp", "seed=2")
    assert cfg.stages == ["explore", "finetune"]
    assert (cfg.algo.name, cfg.policy.kind, cfg.env.name) == ("edp", "edp", "pointmaze_umaze")
    explore = cfg.explore
    assert (explore.env_id, explore.steps, explore.learning_starts) == (
        "flowrl/PointMaze-UMaze-v0",
        20000,
        2000,
    )
    assert (explore.behavior, explore.train_freq, explore.net_arch) == ("gaussian", 4, [128, 128])
    assert explore.intrinsic["num_draws"] == 8 and explore.intrinsic["width"] == 128
    assert explore.actor == {"width": 128, "depth": 2, "num_steps": 8}
    assert (cfg.total_timesteps, cfg.eval.freq, cfg.eval.episodes) == (20000, 2500, 10)
    assert cfg.output_dir == "outputs/maze_edp/pointmaze_umaze/seed2"
    assert cfg.pretrain_dir == "outputs/maze_edp/pretrain/pointmaze_umaze_seed2"
    TRAIN.check_compatible(cfg)  # the explore stage makes π_pre: nothing else is needed
    cfg = TRAIN.compose_config(
        "experiment=maze_edp", "env=pointmaze_medium", "explore.env_id=flowrl/PointMaze-Medium-v0"
    )
    assert cfg.env.id.endswith("PointMazeGoal-Medium-v0")
    assert cfg.pretrain_dir == "outputs/maze_edp/pretrain/pointmaze_medium_seed0"


def test_configs_from_python():
    cfg = TRAIN.compose_config("algo=ppo", "env=hopper", "seed=2")
    # By name: another test may load train.py again, re-registering its dataclasses.
    assert (type(cfg).__name__, type(cfg.algo).__name__) == ("TrainConfig", "PPOConfig")
    assert cfg.output_dir == "outputs/train/ppo/hopper/seed2"
    built = TRAIN.TrainConfig(
        algo=TRAIN.SACConfig(buffer_size=100),
        policy=TRAIN.GaussianPolicyConfig(),
        env=TRAIN.EnvConfig(name="pendulum", id="Pendulum-v1"),
    )
    cfg = TRAIN.as_train_config(built)
    assert cfg.output_dir == "outputs/train/sac/pendulum/seed0"
    assert isinstance(TRAIN.build_model(cfg, TRAIN.make_vec_env_from_config(cfg.env)), SAC)


def test_vec_env_from_config():
    env = TRAIN.as_train_config(
        config("env.norm_reward=true", "env.max_episode_steps=7", "algo.gamma=0.9")
    ).env
    venv = TRAIN.make_vec_env_from_config(env, n_envs=2, seed=0, gamma=0.9)
    assert isinstance(venv, VecNormalize) and not venv.norm_obs and venv.gamma == 0.9
    assert venv.num_envs == 2
    venv.reset()
    for _ in range(7):
        _, _, dones, infos = venv.step(np.zeros((2, 1), np.float32))
    assert dones.all() and infos[0]["episode"]["l"] == 7  # Monitor inside, time limit applied
    plain = TRAIN.make_vec_env_from_config(env, norm_reward=False)
    assert isinstance(plain, DummyVecEnv)
    multigoal = TRAIN.make_vec_env_from_config(config("env=multigoal").env)
    assert multigoal.observation_space.shape == (2,)
    env.vec_env = "threads"
    with pytest.raises(ValueError, match="vec_env"):
        TRAIN.make_vec_env_from_config(env)


def test_tiny_run_writes_everything_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = config(*TINY_REINFLOW, f"output_dir={out}")
    results = TRAIN.train(cfg)
    for name in ("model.zip", "results.json", "curve.png", "curve.csv"):
        assert (out / name).is_file(), name
    assert any((out / "tb").iterdir())
    assert not (out / "vecnormalize.pkl").exists()  # pendulum: no reward normalization
    assert [row["timesteps"] for row in results["curve"]] == [0, 256, 512]
    assert [row["env_steps"] for row in results["curve"]] == [0, 256, 512]  # one per step
    assert results["timesteps"] == 512 and results["final"] == results["curve"][-1]
    assert np.isfinite(results["final"]["return_deterministic_mean"])
    assert results["steps_per_second"] > 0 and results["wall_time_s"] > results["eval_time_s"]
    assert results["config"]["algo"]["n_steps"] == 64
    assert json.loads((out / "results.json").read_text()) == results
    model = ReinFlow.load(out / "model.zip")
    assert model.policy.num_steps == 2

    stamp = (out / "model.zip").stat().st_mtime_ns
    again = TRAIN.train(config(*TINY_REINFLOW, f"output_dir={out}", "progress_bar=true"))
    assert again == results and (out / "model.zip").stat().st_mtime_ns == stamp
    assert "skipping" in capsys.readouterr().out
    # The seed fixes the run: another folder gets the very same curve.
    other = TRAIN.train(config(*TINY_REINFLOW, f"output_dir={tmp_path / 'other'}"))
    strip = lambda curve: [{k: v for k, v in r.items() if k != "time_s"} for r in curve]  # noqa: E731
    assert strip(other["curve"]) == strip(results["curve"])

    changed = config(*TINY_REINFLOW, f"output_dir={out}", "total_timesteps=64", "algo.n_epochs=2")
    with pytest.raises(ValueError, match="differs in: algo.n_epochs, total_timesteps"):
        TRAIN.train(changed)

    # A results.json written before an option existed still matches that option's default
    # (the behaviour the run had), and only that value.
    old = json.loads((out / "results.json").read_text())
    del old["config"]["env"]["action_chunk"], old["config"]["algo"]["critic_full_epochs"]
    for key in ("entropy_control", "cov_fraction", "clip_cov_bounds", "kl_cov_coef"):
        del old["config"]["algo"][key]  # ReinFlow runs from before the on-policy core
    (out / "results.json").write_text(json.dumps(old))
    assert TRAIN.train(config(*TINY_REINFLOW, f"output_dir={out}")) == old
    with pytest.raises(ValueError, match="differs in: env.action_chunk"):
        TRAIN.train(config(*TINY_REINFLOW, f"output_dir={out}", "env.action_chunk=2"))


def test_tiny_policyflow_run_and_its_summary(tmp_path):
    tiny = [o for o in TINY_REINFLOW if not o.startswith(("algo=", "policy.noise_hidden"))]
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        results = TRAIN.train(config("algo=policyflow", *tiny, f"seed={seed}", f"output_dir={out}"))
        assert results["config"]["algo"]["name"] == "policyflow"
        assert PolicyFlow.load(out / "model.zip").policy.num_steps == 2
    summarize = importlib.import_module("flowrl.experiments.summarize")
    rows = summarize.summarize(summarize.load_runs([tmp_path / "seed0", tmp_path / "seed1"]))
    assert {row["group"] for row in rows} == {"policyflow (scratch) on Pendulum-v1"}
    assert [row["seeds"] for row in rows] == [[0, 1], [0, 1]]


def test_tiny_ppo_run_saves_the_reward_normalizer(tmp_path):
    overrides = [
        "algo=ppo",
        "env.norm_reward=true",
        "total_timesteps=128",
        "algo.n_steps=64",
        "eval.freq=128",
        "eval.episodes=1",
        "eval.stochastic=false",
        "eval.at_start=false",
        "env.max_episode_steps=20",
        "progress_bar=false",
        f"output_dir={tmp_path}",
    ]
    results = TRAIN.train(config(*overrides))
    assert (tmp_path / "vecnormalize.pkl").is_file()
    assert not VecNormalize.load(
        str(tmp_path / "vecnormalize.pkl"), DummyVecEnv([_pendulum])
    ).norm_obs
    assert [row["timesteps"] for row in results["curve"]] == [128]
    assert "return_stochastic_mean" not in results["final"]


def _pendulum():
    import gymnasium

    return gymnasium.make("Pendulum-v1")


def test_observation_normalization_for_gaussian_policies(tmp_path):
    overrides = [
        "algo=ppo",
        "env.norm_obs=true",
        "total_timesteps=128",
        "algo.n_steps=64",
        "eval.freq=128",
        "eval.episodes=1",
        "eval.at_start=false",
        "env.max_episode_steps=20",
        "progress_bar=false",
        f"output_dir={tmp_path}",
    ]
    results = TRAIN.train(config(*overrides))
    saved = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), DummyVecEnv([_pendulum]))
    assert saved.norm_obs and not saved.norm_reward  # pendulum: rewards as they are
    assert saved.obs_rms.count > 128  # statistics of the training steps
    assert np.isfinite(results["final"]["return_deterministic_mean"])


def test_multirun_gives_each_seed_its_own_folder(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "experiments" / "train.py"),
        "-m",
        "experiment=pendulum_quick",
        "seed=0,1",
        "total_timesteps=128",
        "algo.n_steps=64",
        "algo.batch_size=32",
        "algo.n_epochs=1",
        "eval.freq=128",
        "eval.episodes=1",
        "env.max_episode_steps=20",
        "progress_bar=false",
        f"output_dir={tmp_path}/runs/seed${{seed}}",
        f"hydra.sweep.dir={tmp_path}/sweep",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for seed in (0, 1):
        results = json.loads((tmp_path / "runs" / f"seed{seed}" / "results.json").read_text())
        assert results["config"]["seed"] == seed and results["timesteps"] == 128
        # Hydra's records of the job too (test_hydra_conventions.py: the whole layout)
        assert (tmp_path / "runs" / f"seed{seed}" / ".hydra" / "overrides.yaml").is_file()
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()


def test_lr_schedule_from_the_command_line(tmp_path):
    from flowrl.optim import CosineSchedule, LinearSchedule

    schedule = ["algo.lr_schedule.kind=linear", "algo.lr_schedule.final_fraction=0.1"]
    cfg = TRAIN.as_train_config(
        config(
            *TINY_REINFLOW, *schedule, "algo.critic_learning_rate=0.002", f"output_dir={tmp_path}"
        )
    )
    venv = TRAIN.make_vec_env_from_config(cfg.env, 1, cfg.seed, cfg.algo.gamma)
    model = TRAIN.build_model(cfg, venv)
    assert model.learning_rate == LinearSchedule(3e-4, 0.1)
    assert model.critic_learning_rate == LinearSchedule(0.002, 0.1)
    model.learn(2 * cfg.algo.n_steps)  # updates at remaining progress 1/2 and 0
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)
    assert model.policy.critic_optimizer.param_groups[0]["lr"] == pytest.approx(2e-4)
    venv.close()

    # The default builds the model as before schedules existed: plain floats.
    model = TRAIN.build_model(TRAIN.as_train_config(config(*TINY_REINFLOW)), venv)
    assert (model.learning_rate, model.critic_learning_rate) == (3e-4, 1e-3)
    cfg = TRAIN.as_train_config(config("algo=policyflow", "algo.lr_schedule.kind=cosine"))
    model = TRAIN.build_model(cfg, venv)
    assert model.critic_learning_rate == CosineSchedule(1e-3, 0.0)
    with pytest.raises(ValueError, match="algo.lr_schedule.kind must be one of"):
        TRAIN.as_train_config(config("algo.lr_schedule.kind=step"))
    with pytest.raises(ValueError, match="lr_schedule is not an option of PPOConfig"):
        TRAIN.as_train_config(config("algo=ppo", "+algo.lr_schedule.kind=linear"))


def test_results_without_the_explore_stage_still_match():
    config = TRAIN.config_dict(TRAIN.compose_config(*TINY_REINFLOW))
    old = json.loads(json.dumps(config))
    del old["explore"], old["checkpoint"]["explore_steps"]  # before the explore stage existed
    assert TRAIN.config_changes(old, config) == []
    changed = TRAIN.config_dict(TRAIN.compose_config(*TINY_REINFLOW, "explore.steps=5"))
    assert TRAIN.config_changes(old, changed) == ["explore.steps"]


def test_results_without_lr_schedule_still_match():
    constant = {"kind": "constant", "final_fraction": 0.0}
    for algo in ("reinflow", "policyflow"):
        old = {"algo": {"name": algo, "learning_rate": 3e-4}}
        assert TRAIN.with_added_options(old)["algo"]["lr_schedule"] == constant
    assert "lr_schedule" not in TRAIN.with_added_options({"algo": {"name": "ppo"}})["algo"]
    saved = {"algo": {"name": "reinflow", "lr_schedule": {"kind": "linear", "final_fraction": 0}}}
    assert TRAIN.with_added_options(saved)["algo"]["lr_schedule"]["kind"] == "linear"
