import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import flowrl
import flowrl.optional
from flowrl.optional import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "flowrl.flow",
    "flowrl.nets",
    "flowrl.data",
    "flowrl.policies",
    "flowrl.algos",
    "flowrl.envs",
    "flowrl.kernels",
]
OPTIONAL = ["jax", "triton", "mujoco.mjx", "mujoco_playground"]

# Records every attempt to import an optional backend (even one that fails because the
# backend is not installed, which would leave no trace in sys.modules), imports flowrl and
# then its subpackages, and prints what it saw after each stage.
_PROBE = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys

    optional = {optional!r}
    attempts = []

    def is_optional(name):
        return any(name == m or name.startswith(m + ".") for m in optional)

    class Spy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if is_optional(name):
                attempts.append(name)
            return None

    sys.meta_path.insert(0, Spy())
    report = {{}}
    import flowrl
    report["flowrl"] = {{
        "loaded": sorted(m for m in sys.modules if is_optional(m)),
        "attempts": list(attempts),
    }}
    for name in {subpackages!r}:
        importlib.import_module(name)
    report["all"] = {{
        "loaded": sorted(m for m in sys.modules if is_optional(m)),
        "attempts": list(attempts),
        "imported": sorted(m for m in {subpackages!r} if m in sys.modules),
    }}
    print(json.dumps(report))
    """
).format(optional=OPTIONAL, subpackages=SUBPACKAGES)


def test_import_does_not_load_optional_backends():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["flowrl"] == {"loaded": [], "attempts": []}
    assert report["all"]["loaded"] == []
    assert report["all"]["attempts"] == []
    assert report["all"]["imported"] == sorted(SUBPACKAGES)


def test_envs_and_kernels_come_from_top_level_folders():
    # Imported by name: ruff's isort cannot see that flowrl.envs lives in envs/.
    envs = importlib.import_module("flowrl.envs")
    kernels = importlib.import_module("flowrl.kernels")
    assert Path(flowrl.__file__).resolve() == ROOT / "flowrl" / "__init__.py"
    assert Path(envs.__file__).resolve() == ROOT / "envs" / "__init__.py"
    assert Path(kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"
    assert envs.__name__ == "flowrl.envs"
    assert kernels.__name__ == "flowrl.kernels"
    assert flowrl.envs is envs and flowrl.kernels is kernels


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


PACKAGE_DIRS = {
    "flowrl": "flowrl",
    "flowrl.envs": "envs",
    "flowrl.kernels": "kernels",
    "flowrl.experiments": "experiments",
    "flowrl.configs": "configs",
}


def _packages_on_disk() -> set[str]:
    # Every folder of [tool.setuptools.package-dir]: envs/ -> flowrl.envs, …
    roots = {folder: package for package, folder in PACKAGE_DIRS.items()}
    found = set()
    for folder, package in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            found.add(".".join([package, *rel.parts]))
    return found


def test_every_package_is_listed_in_pyproject():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = setuptools["packages"]
    on_disk = _packages_on_disk()
    assert {"flowrl", "flowrl.nets", "flowrl.envs", "flowrl.kernels"} <= on_disk
    assert len(listed) == len(set(listed)), "duplicate entries in [tool.setuptools] packages"
    missing = sorted(on_disk - set(listed))
    assert missing == [], f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    stale = sorted(set(listed) - on_disk)
    assert stale == [], f"{stale} are listed in pyproject.toml but have no __init__.py"
    assert setuptools["package-dir"] == PACKAGE_DIRS


def test_package_scan_maps_top_level_folders(tmp_path, monkeypatch):
    # The scan itself: envs/x → flowrl.envs.x, kernels/y/z → flowrl.kernels.y.z.
    for folder in ["flowrl", "flowrl/sub", "envs", "envs/x", "kernels", "kernels/y/z"]:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "kernels" / "y" / "__init__.py").write_text("")
    (tmp_path / "envs" / "__pycache__").mkdir()
    (tmp_path / "envs" / "__pycache__" / "__init__.py").write_text("")
    (tmp_path / "envs" / "data").mkdir()  # no __init__.py: not a package
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _packages_on_disk() == {
        "flowrl",
        "flowrl.sub",
        "flowrl.envs",
        "flowrl.envs.x",
        "flowrl.kernels",
        "flowrl.kernels.y",
        "flowrl.kernels.y.z",
    }


def test_extras_name_declared_optional_dependencies():
    declared = set(_pyproject()["project"]["optional-dependencies"])
    assert set(EXTRAS.values()) <= declared
    assert EXTRAS == {
        "jax": "mjx",
        "mujoco.mjx": "mjx",
        "mujoco_playground": "playground",
        "triton": "kernels",
    }


def test_require_returns_installed_module():
    assert require("json") is json
    assert require("json", purpose="anything") is json


def test_require_unknown_module_raises():
    name = "a_module_that_does_not_exist_xyz"
    with pytest.raises(ImportError, match=f"pip install {name}") as info:
        require(name)
    assert name not in sys.modules
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "flowrl-policies[" not in str(info.value)


@pytest.mark.parametrize(("module", "extra"), sorted(EXTRAS.items()))
def test_require_missing_extra_names_it(monkeypatch, module, extra):
    calls = []

    def fake_import(name, package=None):
        calls.append(name)
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(flowrl.optional.importlib, "import_module", fake_import)
    with pytest.raises(ImportError) as info:
        require(module, purpose="the tests")
    message = str(info.value)
    assert f'pip install "flowrl-policies[{extra}]"' in message
    assert message.startswith(f"{module} is needed for the tests")
    assert calls == [module]
    with pytest.raises(ImportError, match=re.escape(f"flowrl-policies[{extra}]")) as bare:
        require(module)
    assert str(bare.value).startswith(f"{module} is needed but is not installed")
    assert isinstance(bare.value.__cause__, ImportError)


def test_version_is_a_nonempty_string():
    version = flowrl.__version__
    assert isinstance(version, str)
    assert version != ""
    assert re.match(r"^\d+\.\d+", version)
    assert version == importlib.metadata.version("flowrl-policies")
    assert flowrl.DISTRIBUTION == "flowrl-policies"


# ---------------------------------------------------------------------- the installed pipeline

COMMANDS = {
    "flowrl-train": "flowrl.cli:train",
    "flowrl-enjoy": "flowrl.cli:enjoy",
    "flowrl-eval": "flowrl.cli:evaluate",
    "flowrl-summarize": "flowrl.cli:summarize",
    "flowrl-generators": "flowrl.cli:generators",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from this checkout (in this venv's setuptools, offline)."""
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("src")
    # a copy of the tracked tree, so that the build leaves nothing in the checkout
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = build / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(out), str(build)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("flowrl_policies-*.whl")
    return path


def test_the_wheel_ships_the_pipeline(wheel):
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    # every config of the repository, at its place under flowrl/configs/
    configs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs and {f"flowrl/{name}" for name in configs} <= names
    for module in ("train", "pretrain", "enjoy", "summarize", "generators", "demo"):
        assert f"flowrl/experiments/{module}.py" in names, module
    assert "flowrl/experiments/datasets/hopper_medium_v5.npz" in names
    assert "flowrl/configs/__init__.py" in names
    assert not [n for n in names if n.startswith("flowrl/experiments/benchmarks")]
    assert not [n for n in names if n.split("/")[0] in ("experiments", "configs", "envs")]
    for command, target in COMMANDS.items():
        assert re.search(rf"^{command} = {re.escape(target)}$", entry_points, re.M), command
    # hydra-core only with the pipeline extra
    hydra = [line for line in metadata.splitlines() if "hydra-core" in line]
    assert hydra and all('extra == "pipeline"' in line for line in hydra), hydra


def test_commands_are_declared_and_importable():
    assert _pyproject()["project"]["scripts"] == COMMANDS
    import flowrl.cli

    for target in COMMANDS.values():
        assert callable(getattr(flowrl.cli, target.split(":")[1]))


def test_commands_without_the_pipeline_extra_say_what_to_install(monkeypatch, capsys):
    import flowrl.cli

    real = flowrl.cli.find_spec
    monkeypatch.setattr(
        flowrl.cli, "find_spec", lambda name: None if name == "hydra" else real(name)
    )
    monkeypatch.setattr(sys, "argv", ["flowrl-train", "experiment=main"])
    assert flowrl.cli.train() == 2
    err = capsys.readouterr().err
    assert err.startswith("flowrl-train: error:")
    assert 'pip install "flowrl-policies[pipeline]"' in err


def test_the_library_does_not_import_hydra():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import flowrl.algos, flowrl.cli, sys; print('hydra' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip() == "False"
