"""A fault-injecting, vLLM-shaped OpenAI-compatible server for tests: real HTTP on 127.0.0.1, scripted per request.

Healthy answers look like vLLM's with `return_token_ids` and `logprobs` (byte-level "tokens"), answer closed-set
questions from `structured_outputs.choice`, and give SET-shaped text otherwise, so the real EmotionGraph runs
through it. Each chat request takes the next fault from the script (then `default`):

  ok | 500 | 503 | 429 | malformed | bad_shape | no_token_ids | length | abort | hang | trickle | reset

`push(..., kind="reason")` scripts only the requests of one kind (perceive, reason, label_choice, coherence,
consistency), whatever order the others arrive in. `first_tries="429"` gives that fault to the first arrival of each
distinct request body (every call's first attempt, however many calls run at once). 429 and 503 answers carry
`Retry-After: <retry_after>` when `retry_after` is set.

Run it in a thread (`with FaultServer(...) as server:`), or as a process that can die mid-batch:

  python tests/support/fault_server.py --port 8123 --die-after 10 --log requests.jsonl

Every answered chat request is logged with the item key of the image it is about (`item_key`), so a test can
tell which batch items the server worked on.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS = (
    "ok", "500", "503", "429", "malformed", "bad_shape", "no_token_ids", "length", "abort", "hang", "trickle", "reset",
)  # fmt: skip
KEY_RE = re.compile(r"image ([0-9a-f]{12})")


def item_key(png: bytes) -> str:
    """The key the server gives an image: the first 12 hex digits of its PNG's sha256 (the graph's image hash)."""
    return hashlib.sha256(png).hexdigest()[:12]


class FaultServer:
    """The server and its script. `requests` holds one dict per chat request, in arrival order."""

    def __init__(
        self,
        *,
        models: Iterable[str] = ("tiny",),
        script: Iterable[str] = (),
        default: str = "ok",
        label: str = "awe",
        hang_s: float = 5.0,
        api_key: str | None = None,
        port: int = 0,
        die_after: int | None = None,
        log_path: Path | None = None,
        retry_after: str | None = None,
        first_tries: str | None = None,
    ) -> None:
        self.models = list(models)
        self.script: deque[str] = deque(script)
        self.by_kind: dict[str, deque[str]] = {}
        self.default = default
        self.label = label
        self.hang_s = hang_s
        self.trickle_s = 0.1
        self.api_key = api_key
        self.die_after = die_after
        self.log_path = log_path
        assert first_tries in (None, *FAULTS), f"unknown fault {first_tries}; known: {FAULTS}"
        self.retry_after = retry_after
        self.first_tries = first_tries
        self._bodies_seen: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd = _HTTPServer(("127.0.0.1", port), _Handler)
        self._httpd.fault = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def push(self, *faults: str, kind: str | None = None) -> None:
        unknown = set(faults) - set(FAULTS)
        assert not unknown, f"unknown faults {unknown}; known: {FAULTS}"
        (self.script if kind is None else self.by_kind.setdefault(kind, deque())).extend(faults)

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, wake hanging handlers and cut kept-alive connections (as a dead server would)."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self.lock:
            for connection in list(self._connections):
                _shutdown(connection)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_fault(self, record: dict[str, Any]) -> str:
        with self.lock:
            if self.die_after is not None and len(self.requests) >= self.die_after:
                self._log({**record, "fault": "die"})
                os._exit(3)  # the process dies with this request (and any others) in flight
            body = json.dumps(record["body"], sort_keys=True)
            if self.first_tries is not None and body not in self._bodies_seen:
                self._bodies_seen.add(body)
                fault = self.first_tries
            else:
                for_kind = self.by_kind.get(record["kind"])
                fault = (for_kind or self.script or deque([self.default])).popleft()
            record["fault"] = fault
            self.requests.append(record)
            return fault

    def answered(self, record: dict[str, Any], *, locked: bool = False) -> None:
        record["answered"] = time.monotonic()
        if locked:
            self._log(record)
            return
        with self.lock:
            self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None:
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(json.dumps({k: v for k, v in record.items() if k != "body"}) + "\n")

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self.lock:
            (self._connections.add if alive else self._connections.discard)(connection)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: the default 5 drops connections when dozens of calls arrive at once
    block_on_close = False
    fault: FaultServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like uvicorn: a dying server breaks pooled connections
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fault.track(self.connection, True)

    def finish(self) -> None:
        self.server.fault.track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        fault = self.server.fault
        if self.path == "/health":
            self._send(200, b"")
        elif self.path == "/v1/models":
            if self._authorized():
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fault.models]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not self._authorized():  # vLLM checks the key on every /v1 route before routing
            return
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})
            return
        request = json.loads(body)
        record = _describe(request, self.headers.get("Authorization"))
        self._answer(self.server.fault.next_fault(record), request, record)

    def _authorized(self) -> bool:
        key = self.server.fault.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._json(401, {"error": "Unauthorized"})  # vLLM's own 401 body
        return False

    def _answer(self, fault: str, request: dict[str, Any], record: dict[str, Any]) -> None:
        """Send the response `fault` calls for; log the request as answered when a complete answer went out."""
        server = self.server.fault
        if fault in ("500", "503", "429"):
            code = int(fault)
            error = {"message": f"injected {code}", "type": "InternalServerError", "code": code}
            retry_after = server.retry_after if code in (429, 503) else None
            self._json(code, {"error": error}, extra=None if retry_after is None else {"Retry-After": retry_after})
        elif fault == "malformed":
            self._send(200, b'{"id": "chatcmpl-1", "choices": [{"index": 0, "mess', "application/json")
        elif fault == "bad_shape":  # valid JSON, wrong types: `message` a string, not an object
            choice = {"index": 0, "message": "awe", "token_ids": [97], "logprobs": {"content": [{"logprob": -1.0}]},
                      "finish_reason": "stop"}  # fmt: skip
            self._json(200, {"prompt_token_ids": [1], "choices": [choice]})
        elif fault == "reset":
            self._reset()
        elif fault == "hang":
            server.stopping.wait(server.hang_s)
            self._reset()
        else:
            payload = completion(request, server.label, truncate=fault == "length", token_ids=fault != "no_token_ids")
            if fault == "abort":
                payload["choices"][0]["finish_reason"] = "abort"
            if fault == "trickle":
                if self._trickle(json.dumps(payload).encode()):
                    server.answered(record)
                return
            with server.lock:  # answer and log as one step: a dying server cannot answer without logging
                self._json(200, payload)
                server.answered(record, locked=True)

    def _trickle(self, data: bytes) -> bool:
        """Headers at once, then the body in 20 pieces `trickle_s` apart: each read is quick, the answer is not."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        step = -(-len(data) // 20)
        for start in range(0, len(data), step):
            if self.server.fault.stopping.wait(self.server.fault.trickle_s):
                return False
            try:
                self.wfile.write(data[start : start + step])
            except OSError:
                return False
        return True

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees a connection reset, not an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        _shutdown(self.connection)
        self.close_connection = True

    def _json(self, code: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(payload).encode(), "application/json", extra)

    def _send(self, code: int, data: bytes, content_type: str = "text/plain", extra: dict[str, str] | None = None):
        try:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()


def _describe(request: dict[str, Any], authorization: str | None) -> dict[str, Any]:
    """What the log keeps of a chat request: kind, item key, model, auth header, arrival time."""
    text, images = _prompt(request)
    keys = [item_key(png) for png in images] or KEY_RE.findall(text)[:1]
    return {
        "kind": _kind(request, text),
        "item_key": keys[0] if keys else None,
        "model": request.get("model"),
        "authorization": authorization,
        "received": time.monotonic(),
        "body": request,
    }


def _prompt(request: dict[str, Any]) -> tuple[str, list[bytes]]:
    texts: list[str] = []
    images: list[bytes] = []
    for message in request.get("messages", []):
        content = message.get("content")
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            if part.get("type") == "text":
                texts.append(part["text"])
            elif part.get("type") == "image_url":
                images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
    return "\n".join(texts), images


def _kind(request: dict[str, Any], text: str) -> str:
    choices = (request.get("structured_outputs") or {}).get("choice")
    if choices:
        return "consistency" if choices == ["yes", "no"] else ("coherence" if "<step2>" in text else "label_choice")
    return "reason" if "\\boxed" in text else "perceive"


def answer_text(request: dict[str, Any], label: str) -> str:
    """A well-formed answer to whichever question the request asks."""
    text, images = _prompt(request)
    choices = (request.get("structured_outputs") or {}).get("choice")
    if choices:
        return label if label in choices else ("yes" if "yes" in choices else choices[0])
    if "\\boxed" in text:
        return (
            "<step2>A viewer would feel small and amazed by the scene.</step2>"
            f"<step3>valence: positive; arousal: low</step3> \\boxed{{{label}}}"
        )
    key = item_key(images[0]) if images else "000000000000"
    return f"<step1>In image {key} a wide landscape opens under soft evening light.</step1>"


def completion(request: dict[str, Any], label: str, *, truncate: bool = False, token_ids: bool = True) -> dict:
    """A vLLM-shaped chat completion with `n` choices; `truncate` cuts the answer and says finish_reason=length."""
    prompt, _ = _prompt(request)
    text = answer_text(request, label)
    limit = int(request.get("max_completion_tokens") or 1 << 30)
    if truncate:
        limit = min(limit, len(text.encode()) // 2)
    ids = list(text.encode())
    finish = "length" if len(ids) > limit else "stop"
    ids = ids[:limit]
    choices = [_choice(i, ids, finish, token_ids) for i in range(int(request.get("n", 1)))]
    payload: dict[str, Any] = {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model"),
        "choices": choices,
        "usage": {"prompt_tokens": len(prompt.encode()), "completion_tokens": len(ids)},
    }
    if token_ids:
        payload["prompt_token_ids"] = list(prompt.encode())
    return payload


def _choice(index: int, ids: list[int], finish: str, token_ids: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "index": index,
        "message": {"role": "assistant", "content": bytes(ids).decode(errors="ignore")},
        "logprobs": {"content": [{"token": chr(i), "logprob": -0.25, "bytes": [i], "top_logprobs": []} for i in ids]},
        "finish_reason": finish,
    }
    if token_ids:
        choice["token_ids"] = ids
    return choice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--die-after", type=int, default=None, help="answer this many chat requests, then exit")
    parser.add_argument("--log", type=Path, default=None, help="JSONL of answered chat requests")
    parser.add_argument("--api-key-env", default=None, help="require the key in this environment variable")
    args = parser.parse_args()
    key = os.environ[args.api_key_env] if args.api_key_env else None
    server = FaultServer(models=args.model or ["tiny"], port=args.port, die_after=args.die_after,
                         log_path=args.log, api_key=key)  # fmt: skip
    print(f"fault server on {server.url}", flush=True)
    server._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
