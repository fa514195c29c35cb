"""Import stand-in for vLLM in the training environment of CPU tests: OpenRLHF's Ray modules import it at module
level for their in-process engines, which EMO-R3 never starts (its rollouts reach `vllm serve` over HTTP)."""

__version__ = "0.0.0+cpu-stand-in"


class SamplingParams:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("vLLM is not installed in this environment (this is a CPU test import stand-in)")
