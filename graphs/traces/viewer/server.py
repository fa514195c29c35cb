"""A read-only web viewer for the trace store: run list, one run's graph path and calls, training steps.

Standard library HTTP only (no framework): the viewer must start anywhere `emo-r3` is installed, and it only
ever reads. Every page is rendered by Jinja with autoescaping, and every response carries a strict
Content-Security-Policy with no script source at all, because the pages show model output and user text
verbatim: a trace of an answer containing `<script>` must be a trace, never a script.

It binds to loopback unless told otherwise: traces hold prompts, images and user text, so exposing them to a
network is a decision the user makes explicitly (`allow_remote` / `--allow-remote`). And it answers only requests
addressed to a loopback name (or the allowed remote host): any other `Host` header gets a 421 page and no data,
so a web page that re-points its own domain at 127.0.0.1 (DNS rebinding) cannot read the traces.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emo_r3.graphs.traces.store import TraceStore, TraceStoreError
from emo_r3.graphs.traces.viewer.host_check import HostHeaderCheck
from emo_r3.graphs.traces.viewer.responses import HttpError, Response, html
from emo_r3.graphs.traces.viewer.routes import route
from emo_r3.graphs.traces.viewer.tokens import TokenDecoder
from emo_r3.graphs.traces.viewer.views import ViewerContext

logger = logging.getLogger(__name__)

# No script at all; styles and images only from the viewer itself; nothing may frame the page or post a form away.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
NO_STORE = "no-store"  # traces change while a batch runs; a stale page misleads


class ViewerHandler(BaseHTTPRequestHandler):
    """GET and HEAD only; any other method is a 405 (the viewer never changes the store)."""

    server_version = "emo-r3-trace-viewer"
    sys_version = ""
    context: ViewerContext  # set on the subclass that make_server builds
    host_check: HostHeaderCheck = HostHeaderCheck()  # likewise; the default answers loopback names only

    def do_GET(self) -> None:
        self._answer(self._respond(), send_body=True)

    def do_HEAD(self) -> None:
        self._answer(self._respond(), send_body=False)

    def __getattr__(self, name: str) -> Any:
        """Every other `do_<METHOD>` http.server looks up answers 405 instead of its default 501."""
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)

    def _method_not_allowed(self) -> None:
        if not self._addressed_to_us():
            self._answer(self._misdirected(), send_body=True)
            return
        page = _error_page(HTTPStatus.METHOD_NOT_ALLOWED, "the trace viewer is read-only: only GET and HEAD")
        self._answer(Response(page.status, page.content_type, page.body, {"Allow": "GET, HEAD"}), send_body=True)

    def _respond(self) -> Response:
        """The page, or an error page; a bug shows a short message and goes to the log, never a traceback."""
        try:
            try:
                if not self._addressed_to_us():
                    return self._misdirected()
                url = urlsplit(self.path)
                return route(url.path, url.query, self.context)
            except HttpError as error:
                return _error_page(error.status, error.message)
            except TraceStoreError as error:
                return _error_page(HTTPStatus.SERVICE_UNAVAILABLE, str(error))
        except Exception:
            logger.exception("trace viewer failed on %s", self.path)
        try:
            return _error_page(HTTPStatus.INTERNAL_SERVER_ERROR, "the viewer failed on this page; see its log")
        except Exception:
            return _LAST_RESORT

    def _addressed_to_us(self) -> bool:
        """Whether the Host header names this viewer (a loopback name or an allowed host): no DNS rebinding."""
        return self.host_check.allows(self.headers.get_all("Host") or [])

    def _misdirected(self) -> Response:
        return _error_page(
            HTTPStatus.MISDIRECTED_REQUEST,
            f"This trace viewer answers only requests addressed to {self.host_check.describe()}; open it by that "
            "address. A page reached by another name could be a DNS rebinding attack, so it gets no traces.",
        )

    def _answer(self, response: Response, *, send_body: bool) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in {"Cache-Control": NO_STORE, **response.headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    def end_headers(self) -> None:
        """Security headers on every response, http.server's own error pages included."""
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def _error_page(status: HTTPStatus, message: str) -> Response:
    return html("error.html.j2", status, title=f"{status.value} {status.phrase}", status=status, message=message)


_LAST_RESORT = Response(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", b"trace viewer error\n")


def make_server(
    store_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    model_cache: Path | None = None,
    allowed_hosts: Sequence[str] = (),
) -> ThreadingHTTPServer:
    """Bind the viewer (port 0 = any free port; read `server.server_address`). Call `serve_forever()` on it.

    The store is opened once here so a wrong path fails now, with the store's message, not on the first page.
    `model_cache` is where `offline:<kind>` models live (for decoding token ids); default as `emo-r3` builds them.
    Requests must name the viewer in their Host header: a loopback name, `host` itself when `allow_remote`, any
    IP address when `allow_remote` binds every interface (0.0.0.0 or ::), or one of `allowed_hosts` (e.g. the
    machine's DNS name; non-loopback names need `allow_remote`).
    """
    host_check = HostHeaderCheck.for_server(host, allow_remote, allowed_hosts)  # ValueError for a remote host
    host = host.strip().strip("[]")
    store_path = Path(store_path)
    TraceStore(store_path, readonly=True).close()
    context = ViewerContext(store_path=store_path, decoder=TokenDecoder(model_cache))
    handler = type("BoundViewerHandler", (ViewerHandler,), {"context": context, "host_check": host_check})
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def server_url(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else host
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(
    store_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_remote: bool = False,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve until interrupted (Ctrl-C), printing the URL to open."""
    server = make_server(store_path, host=host, port=port, allow_remote=allow_remote, allowed_hosts=allowed_hosts)
    print(f"EMO-R3 trace viewer for {Path(store_path).resolve()} at {server_url(server)}  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
