"""Shared fixtures: images (generated, and public-domain pictures bundled in PyPI packages) and offline models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The real vLLM server fixture (tests/vllm_server.py): one CPU server per session, started on first use.
pytest_plugins = ["vllm_server"]

# Tests never reach a model hub; anything that tries must fail loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
    from agents.model_cache import default_model_cache

    return default_model_cache()


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """A graph config file with every role on the tiny random Idefics3: fast on CPU, short greedy answers."""
    import yaml

    from agents.offline_models import ensure_model

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
