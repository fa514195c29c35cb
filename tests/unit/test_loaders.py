"""Dataset loaders on tiny generated copies of each official layout, with the mess real downloads contain."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emo_r3.agents.images import prepare_image
from emo_r3.evals.datasets import (
    DATASET_KINDS,
    TRAIN_PERCENT,
    DatasetError,
    DatasetSpecError,
    hash_bucket,
    image_problem,
    load_dataset,
    parse_dataset_spec,
)
from emo_r3.evals.items import LoadedDataset

# ------------------------------------------------------------------------------------------------- file helpers


def _encoded(fmt: str, seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    """A small noise image (noise, so a JPEG is long enough to truncate meaningfully)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_encoded(_FORMATS[path.suffix.lower()], seed))
    return path


def _corrupt(path: Path) -> Path:
    """A JPEG cut in half: the header reads fine, decoding fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _encoded("JPEG", 7)
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _strays(folder: Path) -> None:
    """What Windows, macOS and people leave in dataset folders; none of it may appear as an item or a skip."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Thumbs.db").write_bytes(b"\x00" * 32)
    (folder / ".DS_Store").write_bytes(b"\x00Bud1")
    (folder / "notes.txt").write_text("downloaded from somewhere\n")
    (folder / "._resource_fork.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")


def _reasons(loaded: LoadedDataset) -> str:
    return "\n".join(loaded.skipped)


def _labels(loaded: LoadedDataset) -> dict[str, str]:
    return {item.id: item.label for item in loaded.items}


def _assert_no_strays(loaded: LoadedDataset) -> None:
    text = _reasons(loaded) + " ".join(item.id for item in loaded.items)
    for stray in ("Thumbs.db", ".DS_Store", "notes.txt", "resource_fork"):
        assert stray not in text


# ---------------------------------------------------------------------------------------------- spec and errors


def test_parse_dataset_spec_accepts_kind_and_path():
    assert parse_dataset_spec("EmoSet:/data/EmoSet-118K") == ("emoset", Path("/data/EmoSet-118K"))
    assert parse_dataset_spec("vecbench:/a:b/vec.jsonl") == ("vecbench", Path("/a:b/vec.jsonl"))


@pytest.mark.parametrize("spec", ["emoset", "emoset:", ":/data", "imagenet:/data"])
def test_parse_dataset_spec_errors_list_the_kinds(spec):
    with pytest.raises(DatasetSpecError) as error:
        parse_dataset_spec(spec)
    assert all(kind in str(error.value) for kind in DATASET_KINDS)


def test_load_dataset_rejects_unknown_kind_and_missing_path(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset kind 'imagenet'.*emoset"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset("fi", tmp_path / "absent")
    with pytest.raises(DatasetError, match="limit"):
        load_dataset("fi", tmp_path, limit=-1)


def test_image_problem_catches_every_kind_of_bad_image(tmp_path):
    assert image_problem(_image(tmp_path / "ok.png"), verify=True) is None
    assert image_problem(_encoded("PNG"), verify=True) is None
    assert "not found" in image_problem(tmp_path / "absent.jpg", verify=True)
    assert "0 bytes" in image_problem(_empty(tmp_path / "zero.jpg"), verify=False)
    assert "truncated" in image_problem(_corrupt(tmp_path / "half.jpg"), verify=True)
    assert image_problem(tmp_path / "half.jpg", verify=False) is None  # without verify only stat-level checks
    (tmp_path / "text.png").write_text("hello")
    assert "not an image" in image_problem(tmp_path / "text.png", verify=True)
    png = _encoded("PNG")
    assert "corrupt" in image_problem(png[: len(png) - 30], verify=True)


# ------------------------------------------------------------------------------------------------------- EmoSet


def _emoset(root: Path, nested_info: bool = True) -> Path:
    labels = ["amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"]
    table = {label: index for index, label in enumerate(labels)}
    info = (
        {"emotion": {"label2idx": table, "idx2label": {str(i): k for k, i in table.items()}}} if nested_info else table
    )
    (root / "info.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "info.json").write_text(json.dumps(info))

    def entry(emotion: str, n: int, *, image: bool = True, annotation: dict | None = None) -> list:
        folder = emotion.lower()
        image_rel, annotation_rel = f"image/{folder}/{folder}_{n:05d}.jpg", f"annotation/{folder}/{folder}_{n:05d}.json"
        if image:
            _image(root / image_rel, n)
        if annotation is not None:
            (root / annotation_rel).parent.mkdir(parents=True, exist_ok=True)
            (root / annotation_rel).write_text(json.dumps(annotation))
        return [emotion, f"{folder}_{n:05d}", image_rel, annotation_rel]

    attributes = {"emotion": "amusement", "brightness": 0.6, "colorfulness": 0.3, "scene": "beach",
                  "object": ["person", "dog"], "facial_expression": "happy", "human_action": "running"}  # fmt: skip
    test = [
        entry("amusement", 1, annotation=attributes),
        entry("awe", 2),
        entry("Sadness", 3, annotation={"brightness": 0.1}),
        entry("boredom", 4),
        entry("fear", 5, image=False),
        ["anger"],
    ]
    _corrupt(root / "image/disgust/disgust_00006.jpg")
    test.append(["disgust", "disgust_00006", "image/disgust/disgust_00006.jpg", "annotation/disgust/x.json"])
    (root / "test.json").write_text(json.dumps(test))
    (root / "train.json").write_text(json.dumps([entry("excitement", 10), entry("anger", 11)]))
    _strays(root / "image" / "awe")
    return root


@pytest.mark.parametrize("nested_info", [True, False])
def test_emoset_reads_the_test_split_with_attributes(tmp_path, nested_info):
    loaded = load_dataset("emoset", _emoset(tmp_path / "EmoSet", nested_info))
    assert (loaded.split, loaded.label_set) == ("test", "mikels8")
    assert _labels(loaded) == {"amusement_00001": "amusement", "awe_00002": "awe", "sadness_00003": "sadness"}
    first = loaded.items[0]
    assert first.extra == {"brightness": 0.6, "colorfulness": 0.3, "scene": "beach", "object": ["person", "dog"],
                           "facial_expression": "happy", "human_action": "running"}  # fmt: skip
    assert loaded.items[1].extra == {}  # no annotation file: fewer attributes, item kept
    assert loaded.items[2].extra == {"brightness": 0.1}
    assert first.image == tmp_path / "EmoSet/image/amusement/amusement_00001.jpg"
    reasons = _reasons(loaded)
    assert "test.json[3]: emotion 'boredom' is not a mikels8 label" in reasons
    assert "test.json[5]: expected [emotion" in reasons
    assert "fear_00005 (" in reasons and "image not found" in reasons
    assert "disgust_00006" in reasons and "truncated" in reasons
    assert len(loaded.skipped) == 4
    _assert_no_strays(loaded)


def test_emoset_splits(tmp_path):
    root = _emoset(tmp_path / "EmoSet")
    train = load_dataset("emoset", root, split="train")
    assert (train.split, sorted(_labels(train).values())) == ("train", ["anger", "excitement"])
    from_file = load_dataset("emoset", root / "train.json")
    assert from_file.split == "train" and len(from_file.items) == 2
    with pytest.raises(DatasetError, match=r"no val.json.*\['train', 'test'\]"):
        load_dataset("emoset", root, split="validation")
    with pytest.raises(DatasetError, match="no split 'bogus'"):
        load_dataset("emoset", root, split="bogus")


def test_emoset_refuses_an_info_json_of_another_dataset(tmp_path):
    root = _emoset(tmp_path / "EmoSet")
    (root / "info.json").write_text(json.dumps({"label2idx": {"love": 0, "joy": 1}}))
    with pytest.raises(DatasetError, match="'love' is not a Mikels-8 emotion"):
        load_dataset("emoset", root)


# ------------------------------------------------------------------------------------------------------ parquet


def _parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _row(answer: str, seed: int, **extra) -> dict:
    image = {"bytes": _encoded("PNG", seed), "path": f"img_{seed}.png"}
    return {"images": [image], "problem": "<image>Which emotion does this image evoke?", "answer": answer,
            "course_grained": "positive", "intensity": 0.5 + seed / 100, **extra}  # fmt: skip


def test_parquet_hf_layout_with_awkward_rows(tmp_path):
    root = tmp_path / "emoset2k"
    _image(root / "data" / "side.PNG", 3)
    bad = _encoded("JPEG", 9)
    rows = [
        _row("Sad", 1),
        _row("amusement", 2),
        {**_row("content", 4), "images": [{"bytes": None, "path": "side.PNG"}]},  # path-only, beside the file
        {**_row("awe", 5), "images": [{"bytes": bad[: len(bad) // 2], "path": "x.jpg"}]},
        _row("boredom", 6),
        {**_row("fear", 7), "images": [_row("fear", 7)["images"][0]] * 2},
    ]
    _parquet(root / "data" / "test-00000-of-00001.parquet", rows)
    _parquet(root / "data" / "train-00000-of-00001.parquet", [_row("anger", 8)])
    (root / "README.md").write_text("# EmoSet-2k\n")
    loaded = load_dataset("parquet", root)
    assert (loaded.split, loaded.label_set) == ("test", "mikels8")
    stem = "test-00000-of-00001"
    assert _labels(loaded) == {
        f"{stem}:000000": "sadness",
        f"{stem}:000001": "amusement",
        f"{stem}:000002": "contentment",
    }
    first = loaded.items[0]
    assert isinstance(first.image, bytes) and first.text is None
    assert first.extra == {"problem": "Which emotion does this image evoke?", "course_grained": "positive",
                           "intensity": 0.51, "image_path": "img_1.png"}  # fmt: skip
    assert loaded.items[2].image == root / "data" / "side.PNG"
    reasons = _reasons(loaded)
    assert f"{stem}:000003: corrupt or truncated image" in reasons
    assert f"{stem}:000004: answer 'boredom' is not a mikels8 label" in reasons
    assert f"{stem}:000005: expected one image per row, found 2" in reasons
    assert load_dataset("parquet", root, split="train").items[0].label == "anger"
    with pytest.raises(DatasetError, match=r"split 'val'.*\['test', 'train'\]"):
        load_dataset("parquet", root, split="val")


def test_parquet_infers_the_label_set_from_the_answers(tmp_path):
    parrott = _parquet(tmp_path / "parrott.parquet", [_row(a, i) for i, a in enumerate(["love", "Joy", "anger"])])
    assert load_dataset("parquet", parrott).label_set == "parrott6"
    emotion6 = _parquet(tmp_path / "e6.parquet", [_row(a, i) for i, a in enumerate(["joy", "surprise", "sad"])])
    assert load_dataset("parquet", emotion6).label_set == "emotion6"
    valence = _parquet(tmp_path / "pn.parquet", [_row(a, i) for i, a in enumerate(["positive", "negative"])])
    assert load_dataset("parquet", valence).label_set == "custom:negative,positive"


def test_parquet_folder_split_rules(tmp_path):
    only = tmp_path / "only"
    _parquet(only / "emoset2k.parquet", [_row("awe", 1)])
    assert load_dataset("parquet", only).split == "emoset2k"
    several = tmp_path / "several"
    _parquet(several / "train.parquet", [_row("awe", 1)])
    _parquet(several / "validation.parquet", [_row("awe", 2)])
    with pytest.raises(DatasetError, match="no 'test' split"):
        load_dataset("parquet", several)
    assert load_dataset("parquet", several, split="validation").items[0].id == "validation:000000"


def test_parquet_file_without_the_columns_is_reported(tmp_path):
    path = _parquet(tmp_path / "test.parquet", [{"picture": b"x", "emotion": "awe"}])
    loaded = load_dataset("parquet", path)
    assert loaded.items == [] and "needs an `images` and an `answer` column" in _reasons(loaded)


# -------------------------------------------------------------------------------------------- FI / UnbiasedEmo


def _fi(root: Path) -> Path:
    for n in range(3):
        _image(root / "Amusement" / f"amusement_{n}.JPG", n)
    _image(root / "sad" / "sad_1.jpeg", 10)
    _image(root / "Content" / "c_1.png", 11)
    _image(root / "excite" / "e_1.webp", 12)
    _image(root / "anger" / "2019" / "deep" / "a_1.bmp", 13)
    for n in range(4):
        _image(root / "awe" / f"awe_{n}.jpg", 20 + n)
    _image(root / "boredom" / "b_1.jpg", 30)
    _image(root / "stray_at_root.jpg", 31)
    _empty(root / "fear" / "empty.jpg")
    _corrupt(root / "fear" / "broken.jpg")
    (root / "disgust").mkdir()
    _strays(root)
    _strays(root / "awe")
    return root


def test_fi_folders_with_real_world_mess(tmp_path):
    loaded = load_dataset("fi", _fi(tmp_path / "FI"))
    assert (loaded.kind, loaded.split, loaded.label_set) == ("fi", "all", "mikels8")
    labels = _labels(loaded)
    assert labels["Amusement/amusement_0.JPG"] == "amusement"
    assert labels["sad/sad_1.jpeg"] == "sadness"
    assert labels["Content/c_1.png"] == "contentment"
    assert labels["excite/e_1.webp"] == "excitement"
    assert labels["anger/2019/deep/a_1.bmp"] == "anger"
    assert len(labels) == 3 + 1 + 1 + 1 + 1 + 4
    assert [item.id for item in loaded.items] == sorted(labels)
    reasons = _reasons(loaded)
    assert "boredom/: folder name is not a mikels8 label (1 images skipped)" in reasons
    assert "stray_at_root.jpg: not inside an emotion folder" in reasons
    assert "fear/empty.jpg: the file is empty (0 bytes)" in reasons
    assert "fear/broken.jpg: corrupt or truncated image" in reasons
    assert len(loaded.skipped) == 4
    _assert_no_strays(loaded)


def test_fi_inside_a_wrapper_folder(tmp_path):
    _image(tmp_path / "FI" / "emotion_dataset" / "fear" / "f.jpg")
    loaded = load_dataset("fi", tmp_path / "FI")
    assert _labels(loaded) == {"emotion_dataset/fear/f.jpg": "fear"}
    with pytest.raises(DatasetError, match="no sub-folder is named after a mikels8 emotion"):
        load_dataset("fi", tmp_path / "FI" / "emotion_dataset" / "fear")


def test_hashed_train_test_split_is_a_fixed_partition(tmp_path):
    root = _fi(tmp_path / "FI")
    every = load_dataset("fi", root, split="all")
    train = load_dataset("fi", root, split="train")
    test = load_dataset("fi", root, split="test")
    train_ids, test_ids = {i.id for i in train.items}, {i.id for i in test.items}
    assert train_ids.isdisjoint(test_ids) and train_ids | test_ids == {i.id for i in every.items}
    assert all(hash_bucket(i) < TRAIN_PERCENT for i in train_ids)
    assert (train.split, test.split) == ("train", "test")
    assert train_ids == {i.id for i in load_dataset("fi", root, split="train", seed=5).items}  # seed-independent
    with pytest.raises(DatasetError, match=r"no official split.*'all', 'train', 'test'"):
        load_dataset("fi", root, split="val")


def test_unbiasedemo_nested_subject_folders(tmp_path):
    root = tmp_path / "UnbiasedEmo" / "images"
    _image(root / "anger" / "man" / "1.jpg")
    _image(root / "Love" / "couple" / "2.PNG")
    _image(root / "joy" / "3.jpg")
    _image(root / "disgust" / "4.jpg")
    _strays(root / "anger" / "man")
    loaded = load_dataset("unbiasedemo", tmp_path / "UnbiasedEmo")
    assert loaded.label_set == "parrott6"
    assert _labels(loaded) == {"images/Love/couple/2.PNG": "love", "images/anger/man/1.jpg": "anger",
                               "images/joy/3.jpg": "joy"}  # fmt: skip
    assert loaded.skipped == ["images/disgust/: folder name is not a parrott6 label (1 images skipped)"]


# ----------------------------------------------------------------------------------------------------- Emotion6


def test_emotion6_argmax_ties_and_missing_files(tmp_path):
    root = tmp_path / "Emotion6"
    _image(root / "images" / "anger" / "1.jpg", 1)
    _image(root / "images" / "joy" / "2.JPG", 2)
    _image(root / "images" / "fear" / "3.jpg", 3)
    _image(root / "images" / "sadness" / "4.jpg", 4)
    _image(root / "images" / "surprise" / "9.jpg", 9)
    _strays(root / "images" / "joy")
    rows = [
        "[image_filename]\t[valence]\t[arousal]\t[prob. anger]\t[prob. disgust]\t[prob. fear]\t[prob. joy]"
        "\t[prob. sadness]\t[prob. surprise]\t[prob. neutral]",
        "anger/1.jpg\t3.1\t6.2\t0.6\t0.1\t0.1\t0\t0.1\t0\t0.1",
        "joy/2.JPG\t7.0\t5.0\t0\t0\t0\t0.4\t0\t0.2\t0.4",  # tie joy/neutral, settled by the folder
        "fear/3.jpg\t4.0\t5.5\t0.3\t0\t0\t0\t0.3\t0\t0.4",  # neutral wins outright
        "sadness/4.jpg\t2.0\t3.0\t0.4\t0.4\t0\t0\t0.2\t0\t0",  # tie anger/disgust, folder says sadness
        "disgust/5.jpg\t2.0\t3.0\t0\t0.9\t0\t0\t0.1\t0\t0",  # no such file
        "broken row",
    ]
    (root / "ground_truth.txt").write_text("\n".join(rows) + "\n")
    loaded = load_dataset("emotion6", root)
    assert loaded.label_set == "ekman7"
    assert _labels(loaded) == {"anger/1.jpg": "anger", "fear/3.jpg": "neutral", "joy/2.JPG": "joy"}
    first = loaded.items[0]
    assert first.extra["valence"] == 3.1 and first.extra["arousal"] == 6.2
    assert first.extra["distribution"] == {"anger": 0.6, "disgust": 0.1, "fear": 0.1, "joy": 0.0, "sadness": 0.1,
                                           "surprise": 0.0, "neutral": 0.1}  # fmt: skip
    reasons = _reasons(loaded)
    assert "ground_truth.txt:5 (sadness/4.jpg): tie between anger, disgust" in reasons
    assert "ground_truth.txt:7: expected 10 tab-separated columns" in reasons
    assert "disgust/5.jpg" in reasons and "image not found" in reasons
    assert "images/surprise/9.jpg: no row in ground_truth.txt" in reasons
    assert len(loaded.skipped) == 4
    _assert_no_strays(loaded)


# ----------------------------------------------------------------------------------------------------- ArtPhoto


def test_artphoto_labels_from_file_name_prefixes(tmp_path):
    root = tmp_path / "ArtPhoto"
    for name in ("sad_12.jpg", "amusement1.jpg", "Fear_3.JPG", "content_4.png", "excitement_5.jpeg", "Awe7.jpg"):
        _image(root / name)
    _image(root / "boring_1.jpg")
    _image(root / "12.jpg")
    _empty(root / "anger_2.jpg")
    _strays(root)
    loaded = load_dataset("artphoto", root)
    assert _labels(loaded) == {"Awe7.jpg": "awe", "Fear_3.JPG": "fear", "amusement1.jpg": "amusement",
                               "content_4.png": "contentment", "excitement_5.jpeg": "excitement",
                               "sad_12.jpg": "sadness"}  # fmt: skip
    reasons = _reasons(loaded)
    assert "boring_1.jpg: file-name prefix 'boring' is not a mikels8 label" in reasons
    assert "12.jpg: file-name prefix '' is not a mikels8 label" in reasons
    assert "anger_2.jpg: the file is empty (0 bytes)" in reasons
    _assert_no_strays(loaded)


# ----------------------------------------------------------------------------------------------------- Abstract


_HEADER = "'ImageName', 'Amusement', 'Anger', 'Awe', 'Content', 'Disgust', 'Excitement', 'Fear', 'Sad'"


@pytest.mark.parametrize("header", [True, False])
def test_abstract_majority_votes_and_ties(tmp_path, header):
    root = tmp_path / "testImages_abstract"
    _image(root / "abstract_1.jpg", 1)
    _image(root / "abstract_2.JPG", 2)  # the CSV says .jpg
    _image(root / "abstract_3.jpg", 3)
    _image(root / "abstract_9.jpg", 9)
    _strays(root)
    rows = [
        "'abstract_1.jpg', 0, 0, 5, 1, 0, 2, 0, 0",
        '"abstract_2.jpg",0,0,0,0,0,1,0,4',
        "abstract_3.jpg, 3, 0, 3, 0, 0, 0, 0, 1",  # tie amusement/awe
        "'abstract_4.jpg', 0, 6, 0, 0, 0, 0, 0, 0",  # no such file
        "'abstract_5.jpg', 0, 0, 0, 0, 0, 0, 0, 0",  # nobody voted
    ]
    (root / "ABSTRACT_groundTruth.csv").write_text("\n".join([_HEADER] * header + rows) + "\n")
    loaded = load_dataset("abstract", root)
    assert _labels(loaded) == {"abstract_1.jpg": "awe", "abstract_2.jpg": "sadness"}
    assert loaded.items[0].extra["votes"] == {"amusement": 0, "anger": 0, "awe": 5, "contentment": 1, "disgust": 0,
                                              "excitement": 2, "fear": 0, "sadness": 0}  # fmt: skip
    assert loaded.items[1].image == root / "abstract_2.JPG"
    line = 4 if header else 3
    reasons = _reasons(loaded)
    assert f"ABSTRACT_groundTruth.csv:{line} (abstract_3.jpg): tie between amusement, awe (3 votes each)" in reasons
    assert "abstract_4.jpg" in reasons and "image not found" in reasons
    assert "(abstract_5.jpg): no votes" in reasons
    assert "abstract_9.jpg: no row in ABSTRACT_groundTruth.csv" in reasons
    assert len(loaded.skipped) == 4
    _assert_no_strays(loaded)


# ----------------------------------------------------------------------------------------------------- VECBench


def test_vecbench_jsonl_with_per_item_candidates(tmp_path):
    root = tmp_path / "vecbench"
    _image(root / "images" / "fi_1.jpg")
    _image(root / "images" / "we_2.PNG")
    lines = [
        {"id": "q1", "image": "images/fi_1.jpg", "label": "Sad", "candidates": ["amusement", "sad", "Awe"],
         "task": "FI-8", "question": "Which emotion?"},
        {"id": "q2", "image_path": "images/we_2.PNG", "answer": "sadness", "options": "sad, happy",
         "task": "WEBEmo-2"},
        {"id": "q3", "image": "images/fi_1.jpg", "label": "fear", "candidates": ["amusement", "awe"]},
        {"id": "q4", "image": "images/missing.jpg", "label": "awe", "candidates": ["amusement", "awe"]},
        {"id": "q5", "image": "images/fi_1.jpg", "label": "awe"},
    ]  # fmt: skip
    text = "\n".join(json.dumps(line) for line in lines[:2]) + "\n{not json\n\n"
    text += "\n".join(json.dumps(line) for line in lines[2:]) + "\n"
    (root / "vec.jsonl").write_text(text)
    loaded = load_dataset("vecbench", root / "vec.jsonl")
    assert loaded.label_set == "per-item"
    first, second = loaded.items
    assert (first.id, first.label, first.label_set) == ("q1", "sad", "custom:amusement,sad,awe")
    assert first.candidates == ["amusement", "sad", "awe"] and first.image == root / "images" / "fi_1.jpg"
    assert first.extra == {"task": "FI-8", "question": "Which emotion?"}
    assert (second.label, second.label_set, second.extra) == ("sad", "custom:sad,happy", {"task": "WEBEmo-2"})
    reasons = _reasons(loaded)
    assert "vec.jsonl:3: not valid JSON" in reasons
    assert "vec.jsonl:5: label 'fear' is not one of its candidates ['amusement', 'awe']" in reasons
    assert "q4 (" in reasons and "image not found" in reasons
    assert "vec.jsonl:7: no candidates list" in reasons
    with pytest.raises(DatasetError, match="test set"):
        load_dataset("vecbench", root, split="train")


# ------------------------------------------------------------------------------------------ sampling and checks


def test_limit_is_a_seeded_sample_sorted_by_id(tmp_path):
    root = _fi(tmp_path / "FI")
    full = [item.id for item in load_dataset("fi", root).items]
    samples = {seed: [item.id for item in load_dataset("fi", root, limit=4, seed=seed).items] for seed in range(6)}
    for ids in samples.values():
        assert len(ids) == 4 and ids == sorted(ids) and set(ids) <= set(full)
    assert samples[0] == [item.id for item in load_dataset("fi", root, limit=4, seed=0).items]
    assert len({tuple(ids) for ids in samples.values()}) > 1
    assert samples[0] != full[:4] or samples[1] != full[:4]  # not simply the first N
    assert [item.id for item in load_dataset("fi", root, limit=100).items] == full
    assert load_dataset("fi", root, limit=0).items == []


def test_limit_replaces_bad_images_with_good_ones(tmp_path):
    root = tmp_path / "FI"
    for n in range(5):
        _corrupt(root / "fear" / f"bad_{n}.jpg")
    for n in range(3):
        _image(root / "awe" / f"good_{n}.jpg", n)
    loaded = load_dataset("fi", root, limit=3, seed=1)
    assert [item.label for item in loaded.items] == ["awe"] * 3
    assert all("truncated" in reason for reason in loaded.skipped)


def test_without_verification_only_missing_and_empty_files_are_caught(tmp_path):
    loaded = load_dataset("fi", _fi(tmp_path / "FI"), verify_images=False)
    assert "fear/broken.jpg" in _labels(loaded)
    assert "fear/empty.jpg: the file is empty (0 bytes)" in _reasons(loaded)


def test_loading_is_deterministic_and_items_pass_prepare_image(tmp_path):
    root = _fi(tmp_path / "FI")
    first, second = load_dataset("fi", root, limit=5, seed=3), load_dataset("fi", root, limit=5, seed=3)
    assert first.model_dump() == second.model_dump()
    for item in load_dataset("fi", root).items:
        prepare_image(item.image)


def test_parquet_images_as_plain_bytes_or_paths(tmp_path):
    _image(tmp_path / "pics" / "a.jpg")
    as_bytes = _parquet(tmp_path / "b" / "test.parquet", [{"images": [_encoded("PNG")], "answer": "awe"}])
    assert isinstance(load_dataset("parquet", as_bytes).items[0].image, bytes)
    as_path = _parquet(tmp_path / "test.parquet", [{"image": "pics/a.jpg", "answer": "Fear"}])
    item = load_dataset("parquet", as_path).items[0]
    assert (item.image, item.label, item.extra) == (tmp_path / "pics" / "a.jpg", "fear", {"image_path": "pics/a.jpg"})
