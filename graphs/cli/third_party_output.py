"""Keep the libraries' own chatter (transformers' config warnings, weight-loading bars, deprecation warnings) out of
`emo-r3`'s output unless `--verbose` asks for it: a user should see the answer and our errors, not other people's.

Applied before any model library is imported: transformers and huggingface_hub read these variables at import time.
A variable the user set keeps its value.
"""

from __future__ import annotations

import os
import warnings

QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def quiet_third_party(verbose: bool) -> None:
    """Silence third-party warnings, transformers' log records below ERROR and progress bars; `verbose` leaves
    everything on."""
    if verbose:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"emo_r3(\.|$)")  # ours still show
