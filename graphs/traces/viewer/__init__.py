"""The read-only trace viewer: a standard-library HTTP server (`server`) routing (`routes`) to Jinja pages
(`views`) over the trace store, with the token colouring (`tokens`), path diagram (`path_diagram`), query
validation (`query_params`), formatting and host check each in a module of its own."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`serve` and `make_server` from `server`, imported on first use (the host check alone needs no Jinja)."""
    if name in ("serve", "make_server", "server_url"):
        from emo_r3.graphs.traces.viewer import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
