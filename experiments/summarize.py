"""Summarize finished runs of ``experiments/train.py`` as one results table (markdown + JSON).

    python experiments/summarize.py outputs/table/*/seed* --out docs/hopper_results

Runs are grouped by (algorithm, env, pretrained or not, number of torchrun ranks if more than
one); each group gives the number of seeds,
the env steps of training, the return at the start (the first evaluation: a BC policy before
fine-tuning, or a fresh policy) and at the end, as mean ± std over seeds of each seed's
evaluation mean, the change, each seed's final and best evaluation, and the final forward speed
where the env reports one (``x_velocity``); the JSON also keeps every evaluation (each seed's
and their mean), to read a table at a smaller budget. Deterministic and stochastic returns are
reported apart. Also plots every group's mean curve into one PNG.

Beside mean ± std, the start and final returns are given as the interquartile mean over seeds
with its 95 % bootstrap confidence interval, the way rliable reports RL results (Agarwal et al.
2021): the IQM is ``scipy.stats.trim_mean(x, 0.25)`` (``⌊n/4⌋`` seeds cut at each end, so with
2 or 3 seeds it is the mean), the interval the 2.5th and 97.5th percentiles of the IQMs of
``BOOTSTRAP_SAMPLES`` (2000) resamples of the seeds with replacement, drawn with the fixed seed
``BOOTSTRAP_SEED`` (0) so a table regenerates identically (``flowrl.metrics``). With a handful
of seeds the interval is wide, which is what it should say; with one seed there is no interval
(``null`` in the JSON, "n/a" in the table).

The change is always given as ``final - start``; its percentage only for fine-tuning groups
(start: BC) whose start return is positive and at least a tenth of the final's magnitude,
since a relative growth from a start near 0 (a fresh policy, or HalfCheetah's BC start of -3)
says nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from flowrl.experiments.pretrain import differences
from flowrl.experiments.train import read_results, with_added_options
from flowrl.metrics import iqm, iqm_bootstrap_ci

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

MODES = ("deterministic", "stochastic")
PER_RUN = ("seed", "output_dir", "progress_bar", "verbose")  # may differ within a row
MIN_START_FRACTION = 0.1  # a percentage needs start >= this x |final| (and start > 0)
CONFIDENCE = 0.95  # coverage of the IQM's bootstrap interval
BOOTSTRAP_SAMPLES = 2000  # resamples of the seeds (a few ms per interval)
BOOTSTRAP_SEED = 0  # fixed, so a table regenerates identically


def load_runs(folders: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """results.json of each folder, grouped by a label; folders without one are refused."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no results.json (unfinished run?)")
        result = read_results(path)
        if "curve" not in result:
            raise ValueError(f"{path} has no learning curve (a run without the finetune stage)")
        config = result["config"] = with_added_options(result["config"])
        label = f"{config['algo']['name']} ({_start_kind(config)}) on {config['env']['id']}"
        world = int(result.get("world_size", 1))
        if world > 1:  # a torchrun job: the same config, trained by `world` ranks
            label += f", {world} ranks"
        group = groups.setdefault(label, [])
        if group:
            changed = differences(_settings(group[0]["config"]), _settings(config))
            if changed:
                raise ValueError(
                    f"{folder} and the other {label} runs differ in {', '.join(changed)}: "
                    "a row averages seeds of one configuration, summarize the others apart"
                )
        group.append(result)
    return groups


def _start_kind(config: dict[str, Any]) -> str:
    """The start of a run: "BC" (fine-tunes a pretrained actor) or "scratch"."""
    return "BC" if config["pretrained"] or "bc" in config.get("stages", []) else "scratch"


def change_percent(start: float, final: float, pretrained: bool) -> float | None:
    """Relative change of a fine-tuning run in %, or None where a percentage says nothing.

    None for runs from scratch and for starts that are not positive or are below
    ``MIN_START_FRACTION`` of the final's magnitude.
    """
    if not pretrained or start <= 0 or start < MIN_START_FRACTION * abs(final):
        return None
    return 100 * (final - start) / start


def _settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config without what may differ between seeds of one configuration."""
    return {k: v for k, v in config.items() if k not in PER_RUN}


def _env_steps(record: dict[str, Any]) -> int:
    """Env steps of a result or curve row (runs from before chunking knew only timesteps)."""
    return int(record.get("env_steps", record["timesteps"]))


def seed_curves(runs: list[dict[str, Any]], key: str) -> tuple[list[int], np.ndarray]:
    """Env steps of the evaluations all seeds reached, and each seed's ``key`` at them.

    Returns ``(steps, values)`` with ``values`` of shape (seeds, evaluations); seeds that
    stopped early cut the curve to the shortest one.
    """
    length = min(len(run["curve"]) for run in runs)
    steps = [_env_steps(row) for row in runs[0]["curve"][:length]]
    return steps, np.array([[row[key] for row in run["curve"][:length]] for run in runs])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def iqm_with_ci(values: list[float]) -> tuple[float, list[float] | None]:
    """IQM over seeds and its percentile-bootstrap interval, ``[low, high]``.

    The interval covers ``CONFIDENCE`` from ``BOOTSTRAP_SAMPLES`` resamples seeded with
    ``BOOTSTRAP_SEED``; None for a single seed, which has no spread to resample.
    """
    if len(values) < 2:
        return iqm(values), None
    low, high = iqm_bootstrap_ci(values, CONFIDENCE, BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED)
    return iqm(values), [low, high]


def summarize(groups: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per group and mode: seeds, steps, start and final returns over seeds.

    Start and final come as mean and std over seeds and as IQM over seeds with its bootstrap
    interval (``*_iqm``, ``*_iqm_ci95``: ``[low, high]``, or None for one seed).
    """
    rows = []
    for label, runs in groups.items():
        for mode in MODES:
            key = f"return_{mode}_mean"
            if key not in runs[0]["final"]:
                continue
            steps, values = seed_curves(runs, key)
            finals = [run["final"][key] for run in runs]
            starts = values[:, 0].tolist()  # each seed's first evaluation
            start, start_std = _mean_std(starts)
            final, final_std = _mean_std(finals)
            start_iqm, start_ci = iqm_with_ci(starts)
            final_iqm, final_ci = iqm_with_ci(finals)
            pretrained = _start_kind(runs[0]["config"]) == "BC"
            speed_key = f"x_velocity_{mode}_mean"
            speeds = [run["final"].get(speed_key) for run in runs]
            rows.append(
                {
                    "group": label,
                    "mode": mode,
                    "seeds": sorted(run["config"]["seed"] for run in runs),
                    "timesteps": int(np.mean([_env_steps(run) for run in runs])),
                    "start_mean": start,
                    "start_std": start_std,
                    "start_iqm": start_iqm,
                    "start_iqm_ci95": start_ci,
                    "final_mean": final,
                    "final_std": final_std,
                    "final_iqm": final_iqm,
                    "final_iqm_ci95": final_ci,
                    "final_per_seed": finals,
                    "best_per_seed": [max(row[key] for row in run["curve"]) for run in runs],
                    "change": final - start,
                    "change_percent": change_percent(start, final, pretrained),
                    # forward speed at the last evaluation (m/s), where every seed logged it
                    "final_speed_mean": None if None in speeds else float(np.mean(speeds)),
                    # each seed's wall time (training + evaluations, summed over resumes), s
                    "wall_time_s_per_seed": [run.get("wall_time_s") for run in runs],
                    # every evaluation, so the table can be read at a smaller budget later
                    "curve": [
                        {"env_steps": t, "mean": float(v.mean()), "per_seed": v.tolist()}
                        for t, v in zip(steps, values.T, strict=True)
                    ],
                }
            )
    return rows


def _iqm_cell(value: float, ci: list[float] | None) -> str:
    """``IQM [low, high]``, or ``IQM [n/a]`` without an interval (one seed)."""
    interval = "n/a" if ci is None else f"{ci[0]:.0f}, {ci[1]:.0f}"
    return f"{value:.0f} [{interval}]"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: returns as mean ± std over seeds (each seed: its evaluation mean).

    Beside start and final: their IQM over seeds with its 95 % bootstrap interval.
    """
    lines = [
        "| run | policy | seeds | env steps | start | start IQM [95 % CI] | final "
        "| final IQM [95 % CI] | change | final per seed | best per seed | final speed (m/s) "
        "| wall time per run (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        change = f"{r['change']:+.0f}"
        if r["change_percent"] is not None:
            change += f" ({r['change_percent']:+.0f} %)"
        per_seed = ", ".join(f"{v:.0f}" for v in r["final_per_seed"])
        best = ", ".join(f"{v:.0f}" for v in r["best_per_seed"])
        speed = "—" if r["final_speed_mean"] is None else f"{r['final_speed_mean']:.2f}"
        walls = r.get("wall_time_s_per_seed") or [None]
        wall = "—" if None in walls else ", ".join(f"{w / 60:.0f}" for w in walls)
        lines.append(
            f"| {r['group']} | {r['mode']} | {len(r['seeds'])} | {r['timesteps']} | "
            f"{r['start_mean']:.0f} ± {r['start_std']:.0f} | "
            f"{_iqm_cell(r['start_iqm'], r['start_iqm_ci95'])} | "
            f"{r['final_mean']:.0f} ± {r['final_std']:.0f} | "
            f"{_iqm_cell(r['final_iqm'], r['final_iqm_ci95'])} | {change} | {per_seed} | "
            f"{best} | {speed} | {wall} |"
        )
    return "\n".join(lines) + "\n"


def plot(groups: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Mean deterministic return over seeds against env steps, one line per group."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, runs in groups.items():
        key = "return_deterministic_mean"
        if key not in runs[0]["final"]:
            continue
        steps, values = seed_curves(runs, key)
        ax.plot(steps, values.mean(0), marker="o", label=f"{label} ({len(runs)} seeds)")
        ax.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
    ax.set_xlabel("env steps")
    ax.set_ylabel("deterministic return")
    ax.set_title("mean over seeds; band: min-max", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output_dir folders of finished runs")
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.md, OUT.json, OUT.png")
    args = parser.parse_args()
    groups = load_runs(args.runs)
    rows = summarize(groups)
    table = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # OUT + suffix, not with_suffix: a name like results_gamma0.995 has no suffix to replace
    out = {ext: args.out.parent / f"{args.out.name}.{ext}" for ext in ("md", "json", "png")}
    out["md"].write_text(table)
    out["json"].write_text(json.dumps(rows, indent=2) + "\n")
    plot(groups, out["png"])
    print(table)


if __name__ == "__main__":
    main()
