"""The offline models build, reload as plain HF folders, run generate, and are cached atomically.

Models are built once per session into a fresh temporary cache (SmolLM2 import: ~15-25 s, 0.5 GB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, GenerationConfig

from emo_r3.agents.backends.transformers.loading import LoadedModel, eos_token_ids, load_hf_model
from emo_r3.agents.backends.transformers.processors import ImageOnlyQwen2_5_VLProcessor, ModelLoadError
from emo_r3.agents.offline_models import OfflineModelError, cache, ensure_model
from emo_r3.agents.offline_models.idefics3 import IDEFICS3_CHAT_TEMPLATE, IDEFICS3_IMAGE_SEQ_LEN, build_idefics3
from emo_r3.agents.offline_models.lora import build_lora_adapter
from emo_r3.agents.offline_models.qwen_vl import QWEN_VL_CHAT_TEMPLATE

IM_END = 2  # <|im_end|> in the SmolLM2 vocabulary
IDEFICS3_IDS = {
    "<fake_token_around_image>": 49152,
    "<image>": 49153,
    "<end_of_utterance>": 49154,
    "<global-img>": 49155,
    "<row_1_col_1>": 49156,
    "<row_6_col_6>": 49191,
}
QWEN_IDS = {
    "<|vision_start|>": 49152,
    "<|vision_end|>": 49153,
    "<|image_pad|>": 49154,
    "<|video_pad|>": 49155,
}
CAPITAL_QUESTION = "What is the capital of France?"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache built from scratch each session: these tests check the builders, not a warmed `model_cache`."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_idefics3(fresh_cache: Path) -> LoadedModel:
    return load_hf_model(ensure_model("tiny-idefics3", fresh_cache))


@pytest.fixture(scope="session")
def tiny_qwen(fresh_cache: Path) -> LoadedModel:
    return load_hf_model(ensure_model("tiny-qwen2.5-vl", fresh_cache))


@pytest.fixture(scope="session")
def smollm2(fresh_cache: Path) -> LoadedModel:
    return load_hf_model(ensure_model("smollm2", fresh_cache))


@pytest.fixture(scope="session")
def smollm2_idefics3(fresh_cache: Path) -> LoadedModel:
    return load_hf_model(ensure_model("smollm2-idefics3", fresh_cache))


@pytest.fixture
def image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _image_message(text: str, n_images: int = 1) -> list[dict]:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


def _vlm_inputs(loaded: LoadedModel, text: str, images: list[Image.Image]) -> dict[str, torch.Tensor]:
    assert loaded.processor is not None
    prompt = loaded.processor.apply_chat_template(_image_message(text, len(images)), add_generation_prompt=True)
    return dict(loaded.processor(text=prompt, images=images or None, return_tensors="pt"))


def _greedy(loaded: LoadedModel, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, inputs["input_ids"].shape[1] :].tolist()


def _text_inputs(loaded: LoadedModel, question: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": question}]
    return dict(
        loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    )


# --------------------------------------------------------------------------- SmolLM2


def test_smollm2_is_a_plain_hf_folder(smollm2: LoadedModel, fresh_cache: Path) -> None:
    folder = fresh_cache / "smollm2"
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(folder.glob("*.gguf"))
    assert (folder / "model.safetensors").is_file()
    assert getattr(smollm2.model, "hf_quantizer", None) is None
    assert smollm2.model_type == "llama"
    assert not smollm2.supports_images and smollm2.processor is None
    assert smollm2.eos_token_ids == [IM_END]
    assert smollm2.model.dtype == torch.float32 and not smollm2.model.training
    reloaded = AutoModelForCausalLM.from_pretrained(folder)  # no gguf_file anywhere
    assert reloaded.config.tie_word_embeddings


def test_smollm2_knows_the_capital_of_france(smollm2: LoadedModel) -> None:
    ids = _greedy(smollm2, _text_inputs(smollm2, CAPITAL_QUESTION), max_new_tokens=20)
    text = smollm2.tokenizer.decode(ids, skip_special_tokens=True)
    assert "Paris" in text
    assert ids[-1] == IM_END  # the turn ends on <|im_end|>, the generation_config eos


# --------------------------------------------------------------------------- tiny Idefics3


def test_idefics3_special_tokens_match_the_config(tiny_idefics3: LoadedModel) -> None:
    tokenizer, config = tiny_idefics3.tokenizer, tiny_idefics3.model.config
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in IDEFICS3_IDS} == IDEFICS3_IDS
    assert config.image_token_id == IDEFICS3_IDS["<image>"]
    assert config.pad_token_id == IM_END == tokenizer.pad_token_id
    assert tiny_idefics3.eos_token_ids == [IM_END]
    assert len(tokenizer) <= config.text_config.vocab_size and config.text_config.vocab_size % 64 == 0
    assert config.text_config.head_dim == 64  # vLLM CPU attention accepts 64, not 16
    assert config.vision_config.hidden_size // config.vision_config.num_attention_heads == 64
    assert tiny_idefics3.processor.image_seq_len == IDEFICS3_IMAGE_SEQ_LEN == 4
    assert type(tiny_idefics3.processor.image_processor).__name__ == "Idefics3ImageProcessorPil"
    assert tiny_idefics3.processor.chat_template == IDEFICS3_CHAT_TEMPLATE
    assert not tiny_idefics3.model.generation_config.do_sample


@pytest.mark.parametrize("n_images", [1, 2])
def test_idefics3_prompt_has_four_image_tokens_per_image(
    tiny_idefics3: LoadedModel, image: Image.Image, n_images: int
) -> None:
    inputs = _vlm_inputs(tiny_idefics3, "How does this feel?", [image] * n_images)
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(IDEFICS3_IDS["<image>"]) == 4 * n_images
    assert ids.count(IDEFICS3_IDS["<global-img>"]) == n_images
    assert ids.count(IDEFICS3_IDS["<fake_token_around_image>"]) == 2 * n_images
    assert tuple(inputs["pixel_values"].shape) == (1, n_images, 3, 64, 64)
    decoded = tiny_idefics3.tokenizer.decode(ids)
    assert decoded.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert "<image><image><image><image><fake_token_around_image>How does this feel?<|im_end|>" in decoded
    assert decoded.endswith("<|im_start|>assistant\n")


def test_idefics3_chat_template_keeps_a_given_system_message(tiny_idefics3: LoadedModel) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
    ]
    prompt = tiny_idefics3.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_tiny_builds_are_reproducible(tiny_idefics3: LoadedModel, fresh_cache: Path, tmp_path: Path) -> None:
    """Same seed, same weights: a rebuilt model gives the same token ids as the cached one."""
    rebuilt = load_hf_model(build_idefics3(tmp_path / "again", text_model="tiny", seed=0))
    for name, tensor in tiny_idefics3.model.state_dict().items():
        assert torch.equal(tensor, rebuilt.model.state_dict()[name]), name


def test_lora_adapter_targets_the_text_model_and_changes_greedy_output(
    tiny_idefics3: LoadedModel, fresh_cache: Path, image: Image.Image, tmp_path: Path
) -> None:
    """Keys as vLLM expects them, same seed same weights, and a visible effect on greedy decoding."""
    from peft import PeftModel
    from safetensors.torch import load_file

    base_dir = fresh_cache / "tiny-idefics3"
    adapter = build_lora_adapter(base_dir, tmp_path / "a", seed=1)
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(key.startswith("base_model.model.model.text_model.layers.") for key in weights)
    assert {key.split(".")[-3] for key in weights} == {"q_proj", "v_proj"}
    again = load_file(build_lora_adapter(base_dir, tmp_path / "b", seed=1) / "adapter_model.safetensors")
    assert all(torch.equal(weights[key], again[key]) for key in weights)
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(OfflineModelError, match="LoRA builds need an Idefics3"):
        build_lora_adapter(tmp_path / "llama", tmp_path / "c", seed=1)

    inputs = _vlm_inputs(tiny_idefics3, "How does this feel?", [image])
    wrapped = PeftModel.from_pretrained(load_hf_model(base_dir).model, adapter).eval()
    with torch.no_grad():
        output = wrapped.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output[0, inputs["input_ids"].shape[1] :].tolist() != _greedy(tiny_idefics3, inputs, 8)


# --------------------------------------------------------------------------- tiny Qwen2.5-VL


def test_qwen_special_tokens_match_the_config(tiny_qwen: LoadedModel) -> None:
    tokenizer, config = tiny_qwen.tokenizer, tiny_qwen.model.config
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_IDS} == QWEN_IDS
    assert config.image_token_id == QWEN_IDS["<|image_pad|>"]
    assert config.video_token_id == QWEN_IDS["<|video_pad|>"]
    assert config.vision_start_token_id == QWEN_IDS["<|vision_start|>"]
    assert config.vision_end_token_id == QWEN_IDS["<|vision_end|>"]
    assert tiny_qwen.eos_token_ids == [IM_END]
    text = config.text_config
    assert text.hidden_size // text.num_attention_heads == 64
    assert sum(text.rope_parameters["mrope_section"]) == 64 // 2


def test_qwen_processor_is_image_only_and_pil(tiny_qwen: LoadedModel, fresh_cache: Path) -> None:
    processor = tiny_qwen.processor
    assert isinstance(processor, ImageOnlyQwen2_5_VLProcessor)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert getattr(processor, "video_processor", None) is None
    assert processor.chat_template == QWEN_VL_CHAT_TEMPLATE
    saved = json.loads((fresh_cache / "tiny-qwen2.5-vl" / "processor_config.json").read_text())
    assert saved["processor_class"] == "Qwen2_5_VLProcessor"  # the stock name, not our subclass


def test_qwen_prompt_has_one_pad_per_merged_patch(tiny_qwen: LoadedModel, image: Image.Image) -> None:
    inputs = _vlm_inputs(tiny_qwen, "How does this feel?", [image])
    ids = inputs["input_ids"][0].tolist()
    merged_patches = int(inputs["image_grid_thw"].prod()) // 4
    assert ids.count(QWEN_IDS["<|image_pad|>"]) == merged_patches > 0
    assert ids.count(QWEN_IDS["<|vision_start|>"]) == ids.count(QWEN_IDS["<|vision_end|>"]) == 1
    pixels = int(inputs["image_grid_thw"][0, 1] * inputs["image_grid_thw"][0, 2]) * 14 * 14
    assert 56 * 56 <= pixels <= 112 * 112


# --------------------------------------------------------------------------- generation with an image


@pytest.mark.parametrize("fixture", ["tiny_idefics3", "tiny_qwen", "smollm2_idefics3"])
def test_image_text_models_generate(fixture: str, image: Image.Image, request: pytest.FixtureRequest) -> None:
    loaded: LoadedModel = request.getfixturevalue(fixture)
    assert loaded.supports_images
    inputs = _vlm_inputs(loaded, "What emotion does this picture evoke?", [image])
    first = _greedy(loaded, inputs, max_new_tokens=5)
    assert 1 <= len(first) <= 5
    assert all(0 <= token < loaded.model.config.get_text_config().vocab_size for token in first)
    assert isinstance(loaded.tokenizer.decode(first), str)
    assert _greedy(loaded, inputs, max_new_tokens=5) == first  # greedy is deterministic


# --------------------------------------------------------------------------- SmolLM2 inside Idefics3


def test_smollm2_idefics3_is_smollm2_for_text(smollm2: LoadedModel, smollm2_idefics3: LoadedModel) -> None:
    """Same prompt ids and, with no image, the very same greedy continuation as SmolLM2 itself."""
    vlm_inputs = _vlm_inputs(smollm2_idefics3, CAPITAL_QUESTION, [])
    text_inputs = _text_inputs(smollm2, CAPITAL_QUESTION)
    assert vlm_inputs["input_ids"].tolist() == text_inputs["input_ids"].tolist()
    assert _greedy(smollm2_idefics3, vlm_inputs, 20) == _greedy(smollm2, text_inputs, 20)
    model = smollm2_idefics3.model
    assert model.config.tie_word_embeddings and model.config.text_config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.text_model.embed_tokens.weight.data_ptr()


def test_smollm2_idefics3_stays_fluent_with_a_random_eye(smollm2_idefics3: LoadedModel, image: Image.Image) -> None:
    ids = _greedy(smollm2_idefics3, _vlm_inputs(smollm2_idefics3, CAPITAL_QUESTION, [image]), 20)
    assert "Paris" in smollm2_idefics3.tokenizer.decode(ids, skip_special_tokens=True)


# --------------------------------------------------------------------------- cache


def test_ensure_model_reuses_a_finished_build(
    tiny_idefics3: LoadedModel, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = fresh_cache / "tiny-idefics3" / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def refuse(out: Path, dependency: Path | None) -> Path:
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setitem(cache.BUILDERS, "tiny-idefics3", refuse)
    assert ensure_model("tiny-idefics3", fresh_cache) == fresh_cache / "tiny-idefics3"
    assert weights.stat().st_mtime_ns == before


# --------------------------------------------------------------------------- loader on other layouts


def test_vlm_without_image_processor_is_named(fresh_cache: Path, tiny_idefics3: LoadedModel, tmp_path: Path) -> None:
    folder = shutil.copytree(fresh_cache / "tiny-idefics3", tmp_path / "broken")
    (folder / "processor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="without an image processor"):
        load_hf_model(folder)


def test_qwen_checkpoint_layout_with_legacy_files(
    fresh_cache: Path, tiny_qwen: LoadedModel, image: Image.Image, tmp_path: Path
) -> None:
    """Released Qwen2.5-VL folders use preprocessor_config.json, chat_template.json and a list of eos ids."""
    folder = shutil.copytree(fresh_cache / "tiny-qwen2.5-vl", tmp_path / "qwen-like")
    processor_config = json.loads((folder / "processor_config.json").read_text())
    preprocessor = {**processor_config["image_processor"], "processor_class": "Qwen2_5_VLProcessor"}
    preprocessor |= {"min_pixels": 28 * 28, "max_pixels": 56 * 56}
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    (folder / "processor_config.json").unlink()
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    GenerationConfig(eos_token_id=[IM_END, 0], pad_token_id=IM_END).save_pretrained(folder)

    loaded = load_hf_model(folder)
    assert loaded.eos_token_ids == [IM_END, 0]
    assert loaded.processor.chat_template == template
    inputs = _vlm_inputs(loaded, "Hi", [image])
    grid = inputs["image_grid_thw"][0]
    assert int(grid[1] * grid[2]) * 14 * 14 <= 56 * 56  # the folder's max_pixels is honoured
    assert len(_greedy(loaded, inputs, 3)) >= 1


def test_smolvlm_layout_loads_image_only(
    fresh_cache: Path,
    tiny_idefics3: LoadedModel,
    image: Image.Image,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A SmolVLM folder (same weights layout as Idefics3) loads without a video processor."""
    from transformers.models.smolvlm import processing_smolvlm

    if not processing_smolvlm.num2words:  # only used to render video timestamps
        monkeypatch.setattr(processing_smolvlm, "num2words", lambda number: str(number))
    folder = shutil.copytree(fresh_cache / "tiny-idefics3", tmp_path / "smolvlm-like")
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "smolvlm", "architectures": ["SmolVLMForConditionalGeneration"]}
    config["vision_config"]["model_type"] = "smolvlm_vision"
    (folder / "config.json").write_text(json.dumps(config))
    processor_config = json.loads((folder / "processor_config.json").read_text())
    processor_config["processor_class"] = "SmolVLMProcessor"
    processor_config["image_processor"]["image_processor_type"] = "SmolVLMImageProcessor"
    (folder / "processor_config.json").write_text(json.dumps(processor_config))

    loaded = load_hf_model(folder)
    assert loaded.model_type == "smolvlm" and loaded.supports_images
    assert type(loaded.processor.image_processor).__name__ == "SmolVLMImageProcessorPil"
    inputs = _vlm_inputs(loaded, "Hi", [image])
    assert inputs["input_ids"][0].tolist().count(IDEFICS3_IDS["<image>"]) == 4
    assert _greedy(loaded, inputs, 5) == _greedy(tiny_idefics3, _vlm_inputs(tiny_idefics3, "Hi", [image]), 5)


def test_eos_token_ids_accepts_int_list_and_missing(tiny_idefics3: LoadedModel) -> None:
    tokenizer = tiny_idefics3.tokenizer
    assert eos_token_ids(GenerationConfig(eos_token_id=7), tokenizer) == [7]
    assert eos_token_ids(GenerationConfig(eos_token_id=[7, 2, 7]), tokenizer) == [7, 2]
    assert eos_token_ids(GenerationConfig(), tokenizer) == [tokenizer.eos_token_id]
    assert eos_token_ids(None, tokenizer) == [IM_END]
