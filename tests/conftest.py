"""Shared fixtures (images generated or bundled in PyPI packages, offline models) and the test tiers.

Each folder is a tier and its tests carry its marker: `unit` (no model, server, browser or subprocess), `integration`
(tiny models, subprocesses, the CLI as a user runs it) and `servers` (real vLLM, Phoenix, Chromium). Helpers that
tests and their child processes import live in `support/`, which is on the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Fixture modules in support/: the real vLLM server (one CPU server per session, started on first use), the trace
# viewer over a filled store, scripted graph runs for the OpenTelemetry tests, and a Ray cluster with fake GPUs.
pytest_plugins = ["vllm_server", "viewer_site", "scripted_otel_runs", "ray_cluster"]

TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "servers")
# Session-scoped servers (support/): each starts once per worker that runs a test using it.
SHARED_SERVERS = ("vllm_server", "ray_cluster")

# Tests never reach a model hub; anything that tries must fail loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.path} is outside the test tiers {TIERS}: move it into one of them")
        item.add_marker(tier)
        if group := worker_group(tier, item):
            item.add_marker(pytest.mark.xdist_group(group))
    # Slowest tier first: pytest-xdist (`--no-loadscope-reorder`) hands out groups in this order, so the long server
    # groups start at once on separate workers and the many short unit tests fill the gaps at the end.
    items.sort(key=lambda item: -TIERS.index(tier_of(item)))


def tier_of(item: pytest.Item) -> str:
    """The tier folder a test sits in (unit, integration or servers)."""
    return item.path.relative_to(TESTS).parts[0]


def worker_group(tier: str, item: pytest.Item) -> str | None:
    """Which tests `--dist loadgroup` keeps on one worker: those on a shared session server (so one vLLM server and
    one Ray cluster start per run), and each other module of the slower tiers (its module-scoped runs and servers are
    set up once). Unit tests go wherever a worker is free."""
    fixtures = getattr(item, "fixturenames", ())
    if shared := next((name for name in SHARED_SERVERS if name in fixtures), None):
        return shared
    return None if tier == "unit" else item.path.stem


@pytest.fixture(scope="session")
def bundled_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Public-domain / CC0 pictures shipped inside scikit-image and matplotlib, written out as files."""
    import matplotlib.cbook
    import skimage.data

    folder = tmp_path_factory.mktemp("bundled")
    images = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage.data, name)()).save(path)
        images[name] = path
    images["grace_hopper"] = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return images


@pytest.fixture
def noise_image(tmp_path: Path) -> Path:
    path = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where offline models are built once and reused across sessions (CI warms it in .ci/run)."""
    from emo_r3.agents.offline_models.cache import default_model_cache

    return default_model_cache()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A graph config file with every role on the tiny random Idefics3: fast on CPU, short greedy answers."""
    import yaml

    from emo_r3.agents.offline_models import ensure_model

    ensure_model("tiny-idefics3", model_cache)
    short = {"temperature": 0, "max_tokens": 16}
    config = {
        "models": {"default": {"path": "offline:tiny-idefics3"}},
        "roles": {
            "perceiver": {"sampling": short},
            "reasoner": {"sampling": short},
            "reflector": {"sampling": short | {"max_tokens": 4}},
        },
    }
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def one_image_dataset(tmp_path_factory: pytest.TempPathFactory, bundled_images: dict[str, Path]) -> Path:
    """A training dataset in the FI layout: one small picture labelled `contentment`."""
    root = tmp_path_factory.mktemp("train-data")
    (root / "contentment").mkdir()
    Image.open(bundled_images["astronaut"]).resize((64, 48)).save(root / "contentment" / "astronaut.png")
    return root
