"""The flow-matching core: pure tensor maths shared by policies and generators.

* :mod:`~flowrl.flow.times` — THE K-step grid (an int K or a :class:`TimeGrid` value) and
  training-time samplers.
* :mod:`~flowrl.flow.boss` — BOSS: Bellman-optimal K-step grids and the straightening loss.
* :mod:`~flowrl.flow.paths` — the linear path, TrigFlow, and the conversions between them.
* :mod:`~flowrl.flow.integrators` — Euler / midpoint / Heun, the noisy Euler chain and its
  exact log-likelihood.
* :mod:`~flowrl.flow.losses` — conditional flow matching, shortcut self-consistency and
  DiffusionNFT's negative-aware loss.

Convention: t ∈ [0, 1], t = 0 is noise and t = 1 is data.
"""

from flowrl.flow.boss import (
    BossResult,
    bellman_grid,
    bellman_path,
    local_error_costs,
    reference_trajectory,
    straightening_loss,
)
from flowrl.flow.diffusion import (
    cosine_alpha_bar,
    ddpm_posterior,
    ddpm_schedule,
    denoising_step,
    diffusion_sample,
    epsilon_from_velocity,
    epsilon_loss,
)
from flowrl.flow.integrators import (
    METHODS,
    NoisyChain,
    euler_step,
    gaussian_entropy,
    gaussian_log_prob,
    heun_step,
    integrate,
    midpoint_step,
    noisy_chain_log_prob,
    noisy_euler_transition,
    sample_noisy_chain,
)
from flowrl.flow.losses import (
    ShortcutLoss,
    flow_matching_loss,
    nft_loss,
    optimality_probability,
    reduce_batch,
    shortcut_loss,
)
from flowrl.flow.paths import (
    PathSample,
    expand_time,
    linear_interpolate,
    linear_path_sample,
    linear_to_trig_position,
    linear_to_trig_time,
    linear_to_trig_velocity,
    trig_interpolate,
    trig_scale,
    trig_to_linear_position,
    trig_to_linear_time,
    trig_to_linear_velocity,
    trig_velocity,
)
from flowrl.flow.times import (
    BetaTime,
    LogitNormalTime,
    TimeGrid,
    TimeSampler,
    UniformTime,
    make_time_sampler,
    time_grid,
)

__all__ = [
    "METHODS",
    "BetaTime",
    "BossResult",
    "LogitNormalTime",
    "NoisyChain",
    "PathSample",
    "ShortcutLoss",
    "TimeGrid",
    "TimeSampler",
    "UniformTime",
    "bellman_grid",
    "bellman_path",
    "cosine_alpha_bar",
    "ddpm_posterior",
    "ddpm_schedule",
    "denoising_step",
    "diffusion_sample",
    "epsilon_from_velocity",
    "epsilon_loss",
    "euler_step",
    "expand_time",
    "flow_matching_loss",
    "nft_loss",
    "optimality_probability",
    "gaussian_entropy",
    "gaussian_log_prob",
    "heun_step",
    "integrate",
    "linear_interpolate",
    "linear_path_sample",
    "linear_to_trig_position",
    "linear_to_trig_time",
    "linear_to_trig_velocity",
    "local_error_costs",
    "make_time_sampler",
    "midpoint_step",
    "noisy_chain_log_prob",
    "noisy_euler_transition",
    "reduce_batch",
    "reference_trajectory",
    "sample_noisy_chain",
    "shortcut_loss",
    "straightening_loss",
    "time_grid",
    "trig_interpolate",
    "trig_scale",
    "trig_to_linear_position",
    "trig_to_linear_time",
    "trig_to_linear_velocity",
    "trig_velocity",
]
