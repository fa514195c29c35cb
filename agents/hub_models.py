"""Models named by a Hugging Face Hub id (`org/name`, optionally at a revision), found in or fetched into the HF cache.

A hub id resolves to its snapshot folder in the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`) through
`huggingface_hub.snapshot_download`, the machinery under transformers' own `from_pretrained`: it reuses what any
transformers user already downloaded, fetches what is missing, and honours `HF_HUB_OFFLINE`, tokens and
`HF_ENDPOINT`. Everything downstream (loading, processors, chat templates, the trainers, vLLM) then works on one
folder, from one commit, exactly as with a local checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from emo_r3.agents.model_specs import ConfigError

# Formats the PyTorch loaders never read: many repos ship GGUF/ONNX/TF/Flax copies worth gigabytes beside the weights.
IGNORED_FILES = (
    "*.gguf", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.tflite", "*.ot", "*.mlmodel",
    "onnx/*", "openvino/*", "*.mlpackage/*",
)  # fmt: skip
LOCAL_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def is_hub_id(path: str) -> bool:
    """Whether `path` names a Hub repo (`org/name`) rather than a local folder or an `offline:` kind.

    A folder that exists wins (a relative `org/name` folder here is that folder), and anything written as a path
    (`/x`, `./x`, `~/x`) stays a path even when missing, so a typo gives "folder does not exist", not a download.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if path.count("/") != 1 or path.startswith(LOCAL_PATH_PREFIXES) or ":" in path:
        return False
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return not Path(path).expanduser().is_dir()


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of `repo_id` at `revision` (default branch if None), downloaded if missing.

    Raises ConfigError when the Hub cannot give it: offline (or unreachable) with no complete cached copy, an
    unknown repo or revision, a gated or private repo without access.
    """
    from huggingface_hub import constants, is_offline_mode, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, ignore_patterns=list(IGNORED_FILES)))
    except LocalEntryNotFoundError as error:
        if is_offline_mode():
            reason, remedy = "offline mode is on", ", unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download it"
        else:
            reason, remedy = f"the Hub could not be reached ({error.__cause__ or error})", ""
        raise ConfigError(
            f"model {_named(repo_id, revision)} is not (completely) in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} and {reason}: fetch it with `{_download_command(repo_id, revision)}` "
            f"(into the same HF_HUB_CACHE / HF_HOME){remedy}, or point `path` at a local model folder"
        ) from error
    except HfHubHTTPError as error:  # unknown repo or revision, gated/private without a token, Hub errors
        raise ConfigError(
            f"cannot fetch model {_named(repo_id, revision)} from the Hugging Face Hub: {error}\n"
            f"Check the id and revision; for a gated or private repo, accept its terms on "
            f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN). No local folder "
            f"{Path(repo_id).absolute()} exists either."
        ) from error


def _download_command(repo_id: str, revision: str | None) -> str:
    """The `hf` CLI command that puts this model in the cache."""
    return f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")


def _named(repo_id: str, revision: str | None) -> str:
    return f"{repo_id} (revision {revision})" if revision else repo_id
