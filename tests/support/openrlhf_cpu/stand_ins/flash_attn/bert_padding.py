def _missing(*args: object, **kwargs: object) -> None:
    raise RuntimeError("flash-attn is not installed: packed samples need it (this is a CPU test import stand-in)")


index_first_axis = pad_input = rearrange = unpad_input = _missing
