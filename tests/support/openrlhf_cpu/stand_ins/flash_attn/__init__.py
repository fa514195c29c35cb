"""Import stand-in for flash-attn on CPU test machines: OpenRLHF imports it at module level; padded (not packed)
batches never call it."""

__version__ = "0.0.0+cpu-stand-in"
