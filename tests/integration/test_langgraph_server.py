"""The graph served by LangGraph's own server, as a LangGraph user runs it: `langgraph dev` (in-memory runtime, no
browser, no tunnel) on a free loopback port, driven with the official `langgraph_sdk` client; the tiny model."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from langgraph_sdk import get_client
from repo import ROOT

LANGGRAPH = Path(sys.executable).parent / "langgraph"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tiny_config, tmp_path):
    port, log = free_port(), tmp_path / "langgraph-dev.log"
    env = os.environ | {"EMO_R3_CONFIG": str(tiny_config), "LANGSMITH_TRACING": "false"}
    command = [str(LANGGRAPH), "dev", "--config", str(ROOT / "langgraph.json"), "--no-browser", "--no-reload",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with log.open("w") as sink:  # run from tmp_path: the in-memory runtime keeps its state in ./.langgraph_api
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_langgraph_dev_serves_threads_runs_and_streaming(server, bundled_images):
    url, log = server
    image = bundled_images["coffee"]

    async def drive():
        client = get_client(url=url)
        assistants = await client.assistants.search(graph_id="emo-r3")
        thread = await client.threads.create()
        given = {"query": {"id": "coffee", "images": [str(image)], "text": "my morning"}}
        chunks = [c async for c in client.runs.stream(thread["thread_id"], "emo-r3", input=given,
                                                       stream_mode=["updates", "custom"])]  # fmt: skip
        encoded = base64.b64encode(image.read_bytes()).decode()
        inline = await client.runs.wait(None, "emo-r3", input={"query": {"images": [encoded]}})
        return assistants, chunks, await client.threads.get_state(thread["thread_id"]), inline

    assistants, chunks, state, inline = asyncio.run(drive())
    assert assistants and assistants[0]["graph_id"] == "emo-r3"
    updates = [next(iter(c.data)) for c in chunks if c.event == "updates"]
    assert updates[:4] == ["prepare", "perceive", "reason", "reflect"] and updates[-1] == "finalize"
    calls = [c.data for c in chunks if c.event == "custom"]
    assert calls[0]["purpose"] == "perceive" and calls[0]["query_id"] == "coffee" and calls[0]["completion_tokens"] > 0
    result = state["values"]["result"]
    assert result["query_id"] == "coffee" and result["label"] and result["termination"] in ("accepted", "max_rounds")
    assert [call["purpose"] for call in result["trajectory"]["calls"]] == [call["purpose"] for call in calls]
    assert inline["result"]["label"] and inline["result"]["trajectory"]["images"][0]["source"] is None
    served = log.read_text()
    assert "unregistered" not in served and "Blocked deserialization" not in served and "Traceback" not in served
