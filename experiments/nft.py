"""Reward fine-tuning of the digits generator: DiffusionNFT against reward-weighted flow matching.

Starts from the digits teacher of ``experiments/generators.py`` (its ``teacher/checkpoint.pt``)
and fine-tunes it, guidance-free, toward a black-box reward with
:class:`flowrl.generative.finetune.RewardFinetuneTrainer`: ``method=nft`` (DiffusionNFT) and
``method=rwr`` (the baseline: flow matching on the model's own samples weighted by
softmax(A/τ)), at the same number of reward queries (steps × batch), for several seeds::

    python experiments/nft.py                                  # both rewards, 3 seeds
    python experiments/nft.py --rewards class --seeds 0 --steps 100

Rewards (each a black box to the trainer):

* ``class`` — the probability that a digit classifier (trained with another seed than the
  evaluation's, so the evaluation is not the reward) gives to the sample's conditioning label;
* ``ink_top`` — the share of ink in the top half of the image (a simple image statistic).

Every model is evaluated on 898 samples (balanced labels, the pipeline's seed), sampled as
fine-tuned: ``--sample-steps`` Euler steps without guidance. Metrics: the mean reward, and the
pipeline's Fréchet distance, class accuracy and sliced Wasserstein against real digits.
Writes ``<out>/nft_results.json``, ``<out>/nft_results.md`` and ``<out>/nft.png`` (start and
each method's first seed); each run checkpoints in ``--runs`` and a rerun skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from flowrl.experiments.generators import Evaluator, GeneratorsConfig, load_teacher
from flowrl.generative.data import digits
from flowrl.generative.finetune import (
    ClassProbabilityReward,
    RegionMassReward,
    RewardFinetuneConfig,
    RewardFinetuneTrainer,
)
from flowrl.generative.metrics import train_digit_classifier
from flowrl.generative.visualize import save_comparison


def make_reward(name: str) -> Any:
    """The black-box reward ``name`` (``class`` or ``ink_top``)."""
    if name == "class":
        classifier, _ = train_digit_classifier(8, seed=1)  # not the evaluation's (seed 0)
        return ClassProbabilityReward(classifier)
    if name == "ink_top":
        return RegionMassReward(rows=(0, 4))
    raise ValueError(f"unknown reward {name!r}; choose class or ink_top")


def evaluate(sample: Any, reward: Any, evaluator: Evaluator, n: int, seed: int) -> dict[str, float]:
    """Reward and quality of ``n`` samples with balanced labels (fixed noise)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.no_grad():
        samples = sample(n, evaluator.labels)
    seconds = time.perf_counter() - start
    metrics = evaluator.metrics(samples)
    return {
        "reward": float(reward(samples, evaluator.labels).mean()),
        **metrics,
        "seconds": seconds,
    }


def summarize(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {std:.2g}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="outputs/generators/digits/teacher/checkpoint.pt")
    parser.add_argument("--runs", default="outputs/nft_digits")
    parser.add_argument("--out", default="docs/generators")
    parser.add_argument("--rewards", nargs="+", default=["class", "ink_top"])
    parser.add_argument("--methods", nargs="+", default=["nft", "rwr"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-at", nargs="+", type=int, default=[50, 100])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=1.0)
    parser.add_argument("--sample-steps", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=898)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = GeneratorsConfig()
    cfg.evaluate.num_samples = args.num_samples
    data, labels = digits(cfg.data.image_size)
    teacher = load_teacher(args.teacher, cfg, data, labels)
    evaluator = Evaluator(cfg, data, labels)
    n, seed = args.num_samples, cfg.evaluate.seed
    result: dict[str, Any] = {"args": vars(args), "data_floor": evaluator.floor, "rewards": {}}
    panels: dict[str, torch.Tensor] = {}

    def start_sampler(k: int, y: torch.Tensor) -> torch.Tensor:
        return teacher.sample(k, num_steps=args.sample_steps, y=y, guidance=1.0)

    for reward_name in args.rewards:
        reward = make_reward(reward_name)
        start = evaluate(start_sampler, reward, evaluator, n, seed)
        print(f"[{reward_name}] start {start}", flush=True)
        block: dict[str, Any] = {"start": start, "runs": {}}
        torch.manual_seed(seed)
        panels.setdefault("start", start_sampler(40, evaluator.labels[:40]))
        for method in args.methods:
            runs = []
            for run_seed in args.seeds:
                config = RewardFinetuneConfig(
                    steps=args.steps,
                    batch_size=args.batch_size,
                    group_size=args.group_size,
                    lr=args.lr,
                    method=method,
                    beta=args.beta,
                    kl_coef=args.kl_coef,
                    sample_steps=args.sample_steps,
                    seed=run_seed,
                )
                out_dir = Path(args.runs) / reward_name / f"{method}_seed{run_seed}"
                trainer = RewardFinetuneTrainer(
                    teacher.teacher, reward, data, labels, config, out_dir
                )

                def tuned(k: int, y: torch.Tensor, trainer: Any = trainer) -> torch.Tensor:
                    return trainer.sample(k, y=y)

                began = time.perf_counter()
                curve = []
                for at in sorted(set(args.eval_at) | {args.steps}):
                    if at > args.steps:
                        continue
                    trainer.fit(at, progress_bar=False)  # resumes (and checkpoints) each time
                    curve.append({"step": at, **evaluate(tuned, reward, evaluator, n, seed)})
                    print(
                        f"[{reward_name}] {method} seed {run_seed} @ {at}: {curve[-1]}", flush=True
                    )
                runs.append(
                    {
                        "seed": run_seed,
                        "curve": curve,
                        "seconds_this_run": time.perf_counter() - began,
                        "train_reward": [row.get("reward") for row in trainer.history],
                    }
                )
                if run_seed == args.seeds[0]:
                    torch.manual_seed(seed)
                    with torch.no_grad():
                        panels[f"{method}, {reward_name}"] = tuned(40, evaluator.labels[:40])
            block["runs"][method] = runs
        result["rewards"][reward_name] = block
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nft_results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "nft_results.md").write_text(markdown(result))
    save_comparison(panels, out / "nft.png")
    print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """One table per reward: the start, then each method at each evaluated step."""
    args = result["args"]
    lines = [
        f"Digits teacher fine-tuned with groups of {args['group_size']} samples per label, "
        f"{args['batch_size']} samples (= reward queries) per step, lr {args['lr']}, "
        f"β {args['beta']}, KL coef {args['kl_coef']}, sampler {args['sample_steps']} Euler "
        f"steps without guidance; evaluated on {args['num_samples']} samples the same way; "
        f"seeds {args['seeds']} (mean ± std). Real-vs-real FD floor "
        f"{result['data_floor']['frechet_distance']:.3g}.",
        "",
    ]
    for name, block in result["rewards"].items():
        start = block["start"]
        lines += [
            f"Reward `{name}`:",
            "",
            "| model | steps | reward queries | reward | FD | FD / start | class accuracy |",
            "|---|---|---|---|---|---|---|",
            f"| start | 0 | 0 | {start['reward']:.4g} | {start['frechet_distance']:.3g} | 1 | "
            f"{start['class_accuracy']:.3f} |",
        ]
        for method, runs in block["runs"].items():
            for i, point in enumerate(runs[0]["curve"]):
                at = [run["curve"][i] for run in runs]
                ratio = [p["frechet_distance"] / start["frechet_distance"] for p in at]
                lines.append(
                    f"| {method} | {point['step']} | {point['step'] * args['batch_size']} | "
                    f"{summarize([p['reward'] for p in at])} | "
                    f"{summarize([p['frechet_distance'] for p in at])} | {summarize(ratio)} | "
                    f"{summarize([p['class_accuracy'] for p in at])} |"
                )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
