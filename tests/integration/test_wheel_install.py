"""The built wheel, installed into a fresh environment next to the OpenAI Agents SDK (which owns the top-level name
`agents`), runs `emo-r3` from a working directory holding folders named `agents/` and `evals/` of its own.

Only `emo_r3` may be installed at the top level; the SDK's `agents` and the user's folders must never be imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from repo import ROOT

AGENTS_SDK_WHEELS = ROOT / ".venv-test-wheels"
# The user's own folders, named like our packages: importing either is a bug, and says so.
TRAP = 'raise ImportError("imported the working directory\'s own {name}/ instead of emo_r3.{name}")\n'


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy of the project's files, so the build leaves nothing (a `build/` folder) in the checkout."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(out), str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("emo_r3-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A new venv with the wheel and the Agents SDK; torch and the other dependencies come from this test's own
    environment through a .pth line (so nothing is downloaded), and the editable install there stays invisible."""
    sdk = sorted(AGENTS_SDK_WHEELS.glob("openai_agents-*.whl"))
    if not sdk:
        pytest.fail(f"no OpenAI Agents SDK wheel in {AGENTS_SDK_WHEELS}: run `bash scripts/setup.sh` (CI does)")
    env = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*install, str(wheel), str(sdk[-1])], check=True, capture_output=True, timeout=300)
    return env


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    for name in ("agents", "evals"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(TRAP.format(name=name))
    return tmp_path


def test_the_wheel_installs_emo_r3_alone_with_its_licence_and_types(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"emo_r3"}
    assert not any(name.startswith("emo_r3/__init__") for name in names)  # an implicit namespace
    for package in ("agents", "graphs", "training", "evals", "prompts"):
        assert f"emo_r3/{package}/py.typed" in names
    sources = {
        f"emo_r3/{path.relative_to(ROOT).as_posix()}"
        for package in ("agents", "graphs", "training", "evals", "prompts")
        for path in (ROOT / package).rglob("*.py")
    }
    assert sources - set(names) == set()  # every module of the tree ships (a package left out of pyproject would not)
    assert "emo_r3/prompts/templates/v1/reasoner.j2" in names
    assert "emo_r3/graphs/traces/viewer/templates/viewer.css" in names
    licence = [name for name in names if name.endswith(".dist-info/licenses/LICENSE")]
    assert licence and b"Apache License" in zipfile.ZipFile(wheel).read(licence[0])
    info = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in info


def test_the_agents_sdk_owns_the_top_level_agents_name_there(fresh_env: Path, tmp_path: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('agents').origin)"
    python = str(fresh_env / "bin" / "python")
    done = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip().startswith(str(fresh_env)), done.stdout


def test_run_from_a_folder_with_its_own_agents_and_evals(
    fresh_env: Path, user_folder: Path, tiny_config: Path, bundled_images: dict[str, Path]
) -> None:
    image = str(bundled_images["astronaut"])
    for command in (
        [str(fresh_env / "bin" / "emo-r3")],
        [str(fresh_env / "bin" / "python"), "-m", "emo_r3.graphs.cli"],  # puts the working directory on sys.path
    ):
        done = subprocess.run(
            [*command, "run", image, "--config", str(tiny_config), "--no-traces", "--json"],
            cwd=user_folder, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(done.stdout)
        assert result["termination"] in ("accepted", "max_rounds") and result["label"]
    version = subprocess.run(
        [str(fresh_env / "bin" / "emo-r3"), "--version"], cwd=user_folder, capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"emo-r3 {metadata.version('emo-r3')}"
    listed = subprocess.run(
        [str(fresh_env / "bin" / "emo-r3"), "--help"], cwd=user_folder, capture_output=True, text=True, check=True
    )
    assert all(name in listed.stdout for name in ("run", "batch", "traces", "models", "eval", "train"))
