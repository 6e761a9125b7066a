"""experiments/summarize.py: one row per configuration, seeds averaged, mixtures refused."""

import json

import pytest

from flowrl.experiments import summarize
from flowrl.metrics import iqm, iqm_bootstrap_ci


def _run(
    folder,
    seed,
    lr=3e-4,
    start=100.0,
    final=150.0,
    pretrained="bc.pt",
    mid=None,
    speed=None,
    wall=None,
):
    folder.mkdir(parents=True)
    config = {
        "algo": {"name": "reinflow", "learning_rate": lr},
        "env": {"id": "Hopper-v5"},
        "seed": seed,
        "output_dir": str(folder),
        "pretrained": pretrained,
        "stages": ["finetune"],
    }
    row = lambda t, r: {"timesteps": t, "return_deterministic_mean": r}  # noqa: E731
    curve = [row(0, start)] + ([row(500, mid)] if mid is not None else []) + [row(1000, final)]
    if speed is not None:
        curve[-1]["x_velocity_deterministic_mean"] = speed
    result = {"config": config, "timesteps": 1000, "curve": curve}
    if wall is not None:
        result["wall_time_s"] = wall
    result["final"] = result["curve"][-1]
    (folder / "results.json").write_text(json.dumps(result))
    return folder


def test_rows_average_seeds_and_report_the_change(tmp_path):
    runs = [
        _run(tmp_path / "a", 0, final=150, mid=300, speed=1.0, wall=1500.0),
        _run(tmp_path / "b", 1, final=250, mid=200, speed=2.0, wall=2730.0),
    ]
    runs.append(_run(tmp_path / "c", 0, start=10, final=20, pretrained=None))
    groups = summarize.load_runs(runs)
    rows = summarize.summarize(groups)
    bc = next(r for r in rows if r["group"] == "reinflow (BC) on Hopper-v5")
    assert bc["seeds"] == [0, 1] and bc["final_mean"] == 200 and bc["final_std"] == 50
    assert bc["change"] == 100 and bc["change_percent"] == pytest.approx(100.0)
    assert bc["best_per_seed"] == [300, 250] and bc["final_speed_mean"] == pytest.approx(1.5)
    assert bc["wall_time_s_per_seed"] == [1500.0, 2730.0]
    assert bc["curve"] == [
        {"env_steps": 0, "mean": 100.0, "per_seed": [100.0, 100.0]},
        {"env_steps": 500, "mean": 250.0, "per_seed": [300.0, 200.0]},
        {"env_steps": 1000, "mean": 200.0, "per_seed": [150.0, 250.0]},
    ]
    scratch = next(r for r in rows if r["group"] == "reinflow (scratch) on Hopper-v5")
    assert scratch["final_per_seed"] == [20] and scratch["final_speed_mean"] is None
    assert scratch["change"] == 10 and scratch["change_percent"] is None  # from scratch: no %
    table = summarize.markdown(rows)
    assert (
        "| reinflow (BC) on Hopper-v5 | deterministic | 2 | 1000 | 100 ± 0 | 100 [100, 100] | "
        "200 ± 50 | 200 [150, 250] | +100 (+100 %) | 150, 250 | 300, 250 | 1.50 | 25, 46 |" in table
    )
    # One seed: the IQM is its value, and there is no interval.
    # A run from before wall times were recorded: no wall-time cell.
    assert "| 10 ± 0 | 10 [n/a] | 20 ± 0 | 20 [n/a] | +10 | 20 | 20 | — | — |" in table
    summarize.plot(groups, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_a_percentage_only_where_the_start_supports_one():
    assert summarize.change_percent(1000.0, 2000.0, pretrained=True) == pytest.approx(100.0)
    assert summarize.change_percent(1000.0, 2000.0, pretrained=False) is None  # from scratch
    assert summarize.change_percent(-3.0, 3281.0, pretrained=True) is None  # start <= 0
    assert summarize.change_percent(100.0, 3000.0, pretrained=True) is None  # start < final/10
    assert summarize.change_percent(300.0, 3000.0, pretrained=True) == pytest.approx(900.0)


def test_different_configurations_are_not_averaged(tmp_path):
    runs = [_run(tmp_path / "a", 0), _run(tmp_path / "b", 1, lr=1e-4)]
    with pytest.raises(ValueError, match="differ in algo.learning_rate"):
        summarize.load_runs(runs)
    with pytest.raises(FileNotFoundError, match="no results.json"):
        summarize.load_runs([tmp_path / "missing"])


def test_command_line_writes_the_three_files_even_for_a_dotted_name(tmp_path, monkeypatch):
    runs = [str(_run(tmp_path / "a", 0)), str(_run(tmp_path / "b", 1))]
    out = tmp_path / "docs" / "results_gamma0.995"
    monkeypatch.setattr("sys.argv", ["summarize.py", *runs, "--out", str(out)])
    summarize.main()
    for ext in ("md", "json", "png"):
        assert (tmp_path / "docs" / f"results_gamma0.995.{ext}").stat().st_size > 0, ext
    rows = json.loads((tmp_path / "docs" / "results_gamma0.995.json").read_text())
    assert rows[0]["seeds"] == [0, 1]


def test_the_curve_stops_where_the_shortest_seed_did(tmp_path):
    full = _run(tmp_path / "a", 0, mid=300, final=150)
    short = _run(tmp_path / "b", 1, final=250)  # evaluated at 0 and 1000 only
    result = json.loads((short / "results.json").read_text())
    result["curve"][1]["timesteps"] = 500  # the same grid, stopped after its second evaluation
    (short / "results.json").write_text(json.dumps(result))
    steps, values = summarize.seed_curves(
        summarize.load_runs([full, short])["reinflow (BC) on Hopper-v5"],
        "return_deterministic_mean",
    )
    assert steps == [0, 500] and values.tolist() == [[100.0, 300.0], [100.0, 250.0]]


def test_rows_report_the_iqm_over_seeds_with_its_bootstrap_interval(tmp_path):
    starts, finals = [90, 100, 105, 110, 300], [150, 2000, 160, 170, 180]
    runs = [
        _run(tmp_path / f"s{seed}", seed, start=start, final=final)
        for seed, (start, final) in enumerate(zip(starts, finals, strict=True))
    ]
    (row,) = summarize.summarize(summarize.load_runs(runs))
    # Five seeds: one cut at each end, the middle three averaged; the outliers drop out.
    assert row["start_iqm"] == pytest.approx((100 + 105 + 110) / 3)
    assert row["final_iqm"] == pytest.approx((160 + 170 + 180) / 3)
    assert row["final_mean"] == pytest.approx(532)  # the mean does not drop the 2000
    for key, values in (("start", starts), ("final", finals)):
        expected = iqm_bootstrap_ci(values, 0.95, summarize.BOOTSTRAP_SAMPLES, 0)
        assert row[f"{key}_iqm_ci95"] == list(expected)
        low, high = row[f"{key}_iqm_ci95"]
        assert row[f"{key}_iqm"] == pytest.approx(iqm(values))
        assert low <= row[f"{key}_iqm"] <= high
    low, high = row["final_iqm_ci95"]
    assert f"| 170 [{low:.0f}, {high:.0f}] |" in summarize.markdown([row])
    # Seeded: summarizing again gives the same table.
    assert summarize.summarize(summarize.load_runs(runs)) == [row]


def test_one_seed_writes_no_interval_rather_than_failing(tmp_path, monkeypatch):
    out = tmp_path / "docs" / "one_seed"
    run = _run(tmp_path / "a", 0, start=100, final=150)
    monkeypatch.setattr("sys.argv", ["summarize.py", str(run), "--out", str(out)])
    summarize.main()
    (row,) = json.loads((tmp_path / "docs" / "one_seed.json").read_text())
    assert row["start_iqm"] == 100 and row["final_iqm"] == 150
    assert row["start_iqm_ci95"] is None and row["final_iqm_ci95"] is None
    table = (tmp_path / "docs" / "one_seed.md").read_text()
    assert "| 100 ± 0 | 100 [n/a] | 150 ± 0 | 150 [n/a] |" in table
