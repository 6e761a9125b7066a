"""experiments/generators.py: presets compose, typos fail, a tiny pipeline runs and resumes."""

import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


PIPELINE = importlib.import_module("flowrl.experiments.generators")


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="generators", overrides=list(overrides))


@pytest.mark.parametrize("dataset", ["gaussians8", "digits", "video"])
def test_presets_compose_and_build(dataset):
    cfg = OmegaConf.to_object(config(f"dataset={dataset}"))
    assert cfg.data.name == dataset
    data, labels = PIPELINE.load_data(cfg.data) if dataset != "video" else (None, None)
    if data is not None:
        net = PIPELINE.make_net(cfg.model, data[:4], labels)
        assert sum(p.numel() for p in net.parameters()) > 0


def test_typos_fail_clearly():
    with pytest.raises(ConfigCompositionException) as error:
        config("teacher.stepz=10")
    assert "Key 'stepz' not in 'TeacherConfig'" in str(error.value.__cause__)
    with pytest.raises(Exception, match="dataset"):
        config("dataset=cifar")
    cfg = OmegaConf.to_object(config("stages=[teacher,distill]"))
    with pytest.raises(ValueError, match="unknown stages"):
        PIPELINE.run(cfg)


def test_tiny_pipeline_runs_and_resumes(tmp_path, capsys):
    overrides = [
        "dataset=gaussians8",
        "teacher.steps=30",
        "scd.steps=6",
        "rcm.steps=4",
        "teacher.batch_size=64",
        "scd.batch_size=32",
        "rcm.batch_size=32",
        "model.width=32",
        "model.depth=1",
        "evaluate.num_samples=200",
        "evaluate.teacher_steps=[1,4]",
        "evaluate.student_steps=[1,2]",
        f"output_dir={tmp_path}",
        "progress_bar=false",
    ]
    result = PIPELINE.run(OmegaConf.to_object(config(*overrides)))
    saved = json.loads((tmp_path / "results.json").read_text())
    models = {(row["model"], row["steps"]) for row in saved["rows"]}
    assert models == {
        ("teacher", 1),
        ("teacher", 4),
        ("scd", 1),
        ("scd", 2),
        ("rcm", 1),
        ("rcm", 2),
    }
    assert saved["train_steps"] == {"teacher": 30, "scd": 6, "rcm": 4}
    assert (tmp_path / "grids" / "scd_1step.png").exists()
    assert "| teacher | 1 |" in (tmp_path / "results.md").read_text()
    assert result["rows"] == saved["rows"]
    # A second run finds every stage finished: no training, the same numbers.
    again = PIPELINE.run(OmegaConf.to_object(config(*overrides)))
    assert again["train_seconds_this_run"]["teacher"] < 5
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(again["rows"]) == strip(saved["rows"])
