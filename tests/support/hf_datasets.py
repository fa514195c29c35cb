"""Small Hugging Face datasets for the `hf:` tests: built in memory, then written as a `save_to_disk` folder, as a
folder of parquet files, and as the datasets cache that loading a hub dataset leaves behind (so `org/name` loads
offline, with HF_HUB_OFFLINE=1, as it would on a machine that downloaded it once)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from emo_r3.prompts.label_sets import MIKELS_8


def encoded(fmt: str, seed: int, size: tuple[int, int] = (32, 24)) -> bytes:
    """A small noise image in `fmt` (noise, so a truncated JPEG fails to decode)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def mikels_dataset(images: list[bytes | str | None], labels: list[int], texts: list[str | None]) -> datasets.Dataset:
    """The `test` split of a dataset with an Image column (bytes, or a file path), a Mikels-8 ClassLabel column and
    a caption column; a label of -1 is ClassLabel's "no label"."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(MIKELS_8.labels)),
            "caption": datasets.Value("string"),
        }
    )
    cells = [_image_cell(image) for image in images]
    columns = {"image": cells, "label": labels, "caption": texts}
    return datasets.Dataset.from_dict(columns, features=features, split=datasets.Split.TEST)


def _image_cell(image: bytes | str | None) -> dict | None:
    if image is None:
        return None
    return {"bytes": image, "path": None} if isinstance(image, bytes) else {"bytes": None, "path": image}


def write_parquet_folder(dataset: datasets.Dataset, folder: Path) -> Path:
    """`folder/data/test-00000-of-00001.parquet`, the layout of a hub dataset repo."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def cache_as_hub_dataset(dataset: datasets.Dataset, cache: Path, repo_id: str) -> Path:
    """Put `dataset` into the datasets cache `cache` as hub dataset `repo_id` (config `default`).

    A hub load prepares the repo's parquet files into `<cache>/<org>___<name>/default/0.0.0/<hash>/` (Arrow files
    named `<name>-<split>.arrow` and a `dataset_info.json`), which is what `load_dataset(repo_id)` reads offline. Here
    the same preparation runs on a local folder named like the repo, and its output is filed under the repo's name.
    """
    org, name = repo_id.split("/")
    work = cache.parent / f"{name}-staging"
    source = write_parquet_folder(dataset, work / name)
    datasets.load_dataset(str(source), cache_dir=str(work / "cache"))
    (prepared,) = (path for path in (work / "cache" / name / "default" / "0.0.0").iterdir() if path.is_dir())
    target = cache / f"{org}___{name}" / "default" / "0.0.0" / prepared.name
    shutil.copytree(prepared, target)
    shutil.rmtree(work)
    return target
