"""Where the OpenTelemetry spans of graph runs go: an explicit endpoint, else the application's tracer provider,
else the standard OTEL_EXPORTER_OTLP_* variables, else nowhere.

Pure (no OpenTelemetry import), so the command line can tell whether export is asked for before it needs the
optional packages; `emo_r3.graphs.traces.otel.OtelRunExporter` acts on the choice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"  # the full URL, used as it is
ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"  # a base URL; the OTLP exporter appends /v1/traces
PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")  # the first one set wins
HTTP_PROTOBUF = "http/protobuf"


class OtelConfigError(ValueError):
    """The OpenTelemetry settings cannot work; the message says which setting and what to change."""


@dataclass(frozen=True)
class OtelDestination:
    """`endpoint`: our own provider posts to the URL given; `application`: the application's global tracer
    provider takes the spans; `environment`: our own provider, the OTLP exporter reading the URL from `variable`."""

    kind: Literal["endpoint", "application", "environment"]
    url: str | None = None
    variable: str | None = None

    def __str__(self) -> str:
        if self.kind == "application":
            return "the application's OpenTelemetry tracer provider"
        return f"{self.url} ({self.variable})" if self.variable else str(self.url)


def environment_endpoint(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The OTEL_* variable that names the traces endpoint, and its value; the traces-specific one wins."""
    for variable in (TRACES_ENDPOINT, ENDPOINT):
        if value := environ.get(variable, "").strip():
            return variable, value
    return None


def choose_destination(
    endpoint: str | None, *, application_provider: bool, environ: Mapping[str, str]
) -> OtelDestination | None:
    """The precedence: `endpoint` (`--otlp URL`), the application's provider, the OTEL_* endpoint, else None."""
    if endpoint:
        _check_url(endpoint, "--otlp")
        return OtelDestination("endpoint", endpoint)
    if application_provider:
        return OtelDestination("application")
    named = environment_endpoint(environ)
    if named is None:
        return None
    variable, url = named
    _check_url(url, variable)
    _check_protocol(environ)
    return OtelDestination("environment", url, variable)


def _check_url(url: str, setting: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OtelConfigError(
            f"{setting}={url!r} is not an http(s) URL; give the receiver's OTLP/HTTP address, "
            "e.g. http://127.0.0.1:4318/v1/traces"
        )


def _check_protocol(environ: Mapping[str, str]) -> None:
    """Spans go out over OTLP/HTTP with protobuf; a gRPC or JSON receiver would only answer with errors."""
    for variable in PROTOCOLS:
        if protocol := environ.get(variable, "").strip():
            if protocol != HTTP_PROTOBUF:
                raise OtelConfigError(
                    f"{variable}={protocol}: EMO-R3 sends spans over OTLP/HTTP ({HTTP_PROTOBUF}) only; set it to "
                    f"{HTTP_PROTOBUF} (or unset it) and point {ENDPOINT} at the receiver's HTTP port (usually 4318)"
                )
            return
