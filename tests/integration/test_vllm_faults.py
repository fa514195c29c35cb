"""The vLLM backend under faults, against a real HTTP server that misbehaves on cue (tests/support/fault_server.py).

Backend level: retries, backoff, timeouts and clear errors. Graph level: the real EmotionGraph through the
server. CLI level: `emo-r3 batch` with no server, with a server that dies mid-batch, and with an API key.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fault_server import FaultServer, item_key
from PIL import Image
from repo import EMO_R3, ROOT, SUPPORT

from emo_r3.agents.backends.vllm.adapters import AdapterSyncError, load_adapters
from emo_r3.agents.backends.vllm.chat import ServerNotReadyError, VLLMChatModel
from emo_r3.agents.backends.vllm.process import RUNTIME_LORA_UPDATING, free_port
from emo_r3.agents.chat_model import ChatMessage, Completion, ModelCallError, SamplingParams
from emo_r3.agents.images import prepare_image
from emo_r3.agents.model_specs import VLLMModelSpec, load_chat_model
from emo_r3.graphs import EmotionGraph, EmotionQuery, GraphConfig
from emo_r3.prompts import MIKELS_8

ROLES = ("perceiver", "reasoner", "reflector")
SAMPLING = SamplingParams(temperature=0.0, max_tokens=128)
SECRET = "sk-emo-r3-fault-test-7f3a9c"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(hang_s=5.0) as running:
        yield running


def client(url: str, **overrides: Any) -> VLLMChatModel:
    options: dict[str, Any] = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.05} | overrides
    return VLLMChatModel(url, "tiny", **options)


def ask(model: VLLMChatModel, prompt: str = "Describe it. \\boxed{}", choices: list[str] | None = None) -> Completion:
    return asyncio.run(model.chat([ChatMessage.user(prompt)], SAMPLING, choices=choices))


def fails(model: VLLMChatModel) -> tuple[str, float]:
    """The error message of a call that must fail, and how long it took to fail."""
    start = time.monotonic()
    with pytest.raises(ModelCallError) as error:
        ask(model)
    return str(error.value), time.monotonic() - start


# --- backend level --------------------------------------------------------------------------------------------


def test_check_ready_without_a_server_names_the_url_and_how_to_start_one():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerNotReadyError) as error:
        asyncio.run(client(url).check_ready())
    message = str(error.value)
    assert url in message and "cannot connect" in message
    assert "vllm.entrypoints.openai.api_server" in message and "--served-model-name tiny" in message
    assert "docker compose up vllm" in message


def test_check_ready_names_a_missing_model_or_adapter(server):
    asyncio.run(client(server.url).check_ready())
    with pytest.raises(ServerNotReadyError, match=r"does not serve 'perceiver'.*--lora-modules perceiver=DIR"):
        asyncio.run(client(server.url, adapter="perceiver").check_ready())


def test_healthy_answer_is_token_exact(server):
    completion = ask(client(server.url))
    assert completion.finish_reason == "stop" and "\\boxed{awe}" in completion.text
    assert completion.completion_token_ids == list(completion.text.encode())
    assert len(completion.logprobs) == len(completion.completion_token_ids) and completion.prompt_token_ids
    assert ask(client(server.url), choices=["yes", "no"]).text == "yes"
    assert server.requests[-1]["body"]["structured_outputs"] == {"choice": ["yes", "no"]}


@pytest.mark.parametrize("status", ["500", "503", "429"])
def test_server_errors_are_retried_a_bounded_number_of_times(server, status):
    server.default = status
    message, _ = fails(client(server.url, max_retries=2))
    assert len(server.requests) == 3, "max_retries + 1 attempts, no more"
    assert f"HTTP {status}: injected {status}" in message and "gave up after 3 attempts" in message
    assert "`max_retries`" in message


def test_recovery_after_two_failures(server):
    server.push("500", "429")
    completion = ask(client(server.url, max_retries=3, backoff_s=0.2))
    assert completion.finish_reason == "stop"
    assert [request["fault"] for request in server.requests] == ["500", "429", "ok"]


def test_a_retry_waits_as_long_as_the_servers_retry_after_says():
    with FaultServer(retry_after="1") as server:
        server.push("429")  # backoff_s alone would retry within 0.05 s
        completion = ask(client(server.url, backoff_s=0.05))
    first, retry = (request["received"] for request in server.requests)
    assert completion.finish_reason == "stop" and [r["fault"] for r in server.requests] == ["429", "ok"]
    assert retry - first >= 1.0, f"retried {retry - first:.3f} s after a 429 that said Retry-After: 1"


def test_concurrent_retries_are_spread_by_full_jitter():
    """64 calls 429ed at once come back spread over the backoff window, not together after the same wait."""
    calls = 64

    async def all_at_once(model: VLLMChatModel) -> list[Completion]:
        prompts = [f"Describe picture {i}. \\boxed{{}}" for i in range(calls)]
        return await asyncio.gather(*(model.chat([ChatMessage.user(p)], SAMPLING) for p in prompts))

    with FaultServer(first_tries="429") as server:
        completions = asyncio.run(all_at_once(client(server.url, timeout_s=30.0, backoff_s=4.0, max_retries=1)))
    assert len(completions) == calls and all(c.finish_reason == "stop" for c in completions)
    arrivals: dict[str, list[float]] = {}
    for request in server.requests:
        arrivals.setdefault(json.dumps(request["body"]["messages"]), []).append(request["received"])
    gaps = sorted(later - first for first, later in arrivals.values())
    assert len(gaps) == calls, "each call: one 429ed first try, one retry"
    # Each wait is uniform(0, 4 s); plain backoff waits 4 s every time, so no retry would come back within 2 s.
    # Even with a second of overhead per call on a busy machine, all 64 draws missing one side: about 1e-8.
    early = sum(gap < 2.0 for gap in gaps)
    assert 0 < early < calls, f"{early} of {calls} retries within 2 s; gaps {gaps[0]:.2f}..{gaps[-1]:.2f} s"


def test_a_retry_after_past_the_budget_fails_at_once_and_names_the_setting():
    with FaultServer(default="429", retry_after="3600") as server:
        message, elapsed = fails(client(server.url, max_retries=5, retry_budget_s=10.0))
    assert len(server.requests) == 1 and elapsed < 60, "no hour-long sleep"
    assert "HTTP 429: injected 429" in message and "gave up after 1 attempt(s)" in message
    assert "Retry-After of 3600 s" in message and "retry budget of 10 s" in message and "`retry_budget_s`" in message


def test_the_budget_counts_every_wait_of_a_call():
    """Set from a model spec, as a config would: waits of 1 s each (Retry-After), and a third would pass 2.5 s."""
    with FaultServer(default="503", retry_after="1") as server:
        spec = {"backend": "vllm", "base_url": server.url, "model": "tiny", "max_retries": 5, "retry_budget_s": 2.5}
        message, _ = fails(load_chat_model(VLLMModelSpec.model_validate(spec)))
    assert len(server.requests) == 3
    assert "gave up after 3 attempt(s)" in message and "2.0 s of it spent" in message


def test_malformed_json_is_a_clear_error_after_bounded_retries(server):
    server.default = "malformed"
    message, elapsed = fails(client(server.url, max_retries=1))
    assert "answered with malformed JSON" in message and "gave up after 2 attempts" in message
    assert len(server.requests) == 2 and elapsed < 2.0


def test_a_wrongly_shaped_answer_is_a_clear_error(server):
    server.default = "bad_shape"
    message, _ = fails(client(server.url))
    assert "unexpected response shape" in message and len(server.requests) == 1


def test_missing_token_ids_fail_at_once_and_say_what_the_server_needs(server):
    server.default = "no_token_ids"
    message, _ = fails(client(server.url, max_retries=3))
    assert "return_token_ids" in message and "did not return token ids" in message
    assert len(server.requests) == 1, "a server without token ids will not grow them: no retry"


def test_a_hanging_server_times_out_once_and_says_so(server):
    """A timed-out generation is not retried: with retries the default settings made a user wait 4 x 120 s."""
    server.default = "hang"
    message, elapsed = fails(client(server.url, timeout_s=0.3, max_retries=3, backoff_s=0.05))
    assert len(server.requests) == 1
    assert "no answer within 0.3 s" in message and "not retried" in message and "timeout_s" in message
    assert 0.3 <= elapsed < 1.0, elapsed


def test_the_timeout_covers_the_whole_answer_not_each_read(server):
    server.default = "trickle"  # every read is quick, the whole answer takes about two seconds
    message, elapsed = fails(client(server.url, timeout_s=0.3, max_retries=0))
    assert "no answer within 0.3 s" in message and elapsed < 1.5


def test_a_connection_reset_is_retried(server):
    server.push("reset")
    assert ask(client(server.url)).finish_reason == "stop"
    assert [request["fault"] for request in server.requests] == ["reset", "ok"]


def test_truncated_answer_is_recorded_as_length(server):
    server.push("length")
    completion = ask(client(server.url))
    assert completion.finish_reason == "length" and "\\boxed" not in completion.text


def test_an_aborted_generation_is_an_error_not_an_answer(server):
    server.default = "abort"
    message, _ = fails(client(server.url))
    assert "finish_reason='abort'" in message and len(server.requests) == 1


def test_vllm_unauthorized_body_is_a_clear_error():
    with FaultServer(api_key=SECRET) as server:  # vLLM answers a missing key with {"error": "Unauthorized"}
        message, _ = fails(client(server.url))
        with pytest.raises(ServerNotReadyError, match="refused the API key"):
            asyncio.run(client(server.url).check_ready())
    assert "HTTP 401: Unauthorized" in message


def test_api_key_env_that_is_not_set_fails_loudly(server, monkeypatch):
    monkeypatch.delenv("EMO_R3_TEST_KEY", raising=False)
    message, _ = fails(client(server.url, api_key_env="EMO_R3_TEST_KEY"))
    assert "EMO_R3_TEST_KEY" in message and "not set" in message and not server.requests


# --- graph level ----------------------------------------------------------------------------------------------


def vllm_config(url: str, **spec: Any) -> dict[str, Any]:
    """A graph config whose three roles all use one model `v` on the server at `url`."""
    model = {"backend": "vllm", "base_url": url, "model": "tiny", "timeout_s": 5.0, "max_retries": 1} | spec
    return {"models": {"v": model}, "roles": {role: {"model": "v"} for role in ROLES}}


def graph_on(model: VLLMChatModel) -> EmotionGraph:
    return EmotionGraph(GraphConfig(), dict.fromkeys(ROLES, model))


def test_graph_from_config_runs_through_the_server(server, noise_image):
    result = EmotionGraph.from_config(vllm_config(server.url)).run(EmotionQuery(images=[noise_image]))
    assert result.ok and result.termination == "accepted" and result.label == "awe" and result.format_ok
    calls = result.trajectory.calls
    assert [c.purpose for c in calls] == ["perceive", "reason", "coherence", "consistency"]
    assert all(c.model_id == "vllm:tiny" and c.prompt_token_ids and c.finish_reason == "stop" for c in calls)
    assert calls[0].completion_token_ids == list(calls[0].text.encode())


def test_truncated_reasoning_still_gets_a_label_by_closed_set(server, noise_image):
    server.push("length", kind="reason")  # the reasoner's answer is cut off
    result = graph_on(client(server.url)).run(EmotionQuery(images=[noise_image]))
    reason = next(c for c in result.trajectory.calls if c.purpose == "reason")
    assert reason.finish_reason == "length"
    assert not result.format_ok and any("length" in p for p in result.trajectory.reasonings[0].problems)
    assert result.label in MIKELS_8.labels and result.label_source == "closed_set"
    assert "label_choice" in [c.purpose for c in result.trajectory.calls]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [("hang", "no answer within 0.5 s"), ("no_token_ids", "return_token_ids"), ("500", "HTTP 500")],
)
def test_a_failing_server_gives_an_error_result_with_the_failed_call(server, noise_image, fault, expected):
    server.push(fault, fault, kind="reason")  # the reasoner's call fails on both attempts
    result = graph_on(client(server.url, timeout_s=0.5, max_retries=1)).run(EmotionQuery(images=[noise_image]))
    assert result.termination == "error" and expected in result.error
    assert result.path == ["perceive", "reason", "finalize"]
    assert result.trajectory.calls[-1].error and result.trajectory.calls[0].error is None


# --- CLI level: emo-r3 batch ----------------------------------------------------------------------------------


def emo_r3(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*EMO_R3, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=env
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def write_config(path: Path, url: str, **spec: Any) -> Path:
    path.write_text(yaml.safe_dump(vllm_config(url, **spec)))
    return path


def make_images(folder: Path, count: int) -> dict[str, str]:
    """`count` distinct small images; item id -> the server's key for that image."""
    folder.mkdir()
    keys = {}
    for i in range(count):
        path = folder / f"img_{i:02d}.png"
        Image.new("RGB", (32 + i, 24), (i * 20 % 255, 90, 200 - i * 10)).save(path)
        keys[path.name] = item_key(prepare_image(path).png_bytes)
    assert len(set(keys.values())) == count
    return keys


def latest_records(path: Path) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for record in map(json.loads, path.read_text().splitlines())}


def test_batch_without_a_server_exits_2_before_doing_anything(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    make_images(tmp_path / "images", 3)
    out = tmp_path / "results.jsonl"
    config = write_config(tmp_path / "vllm.yaml", url)
    done = emo_r3("batch", str(tmp_path / "images"), "--out", str(out), "--config", str(config), "--no-traces")
    assert done.returncode == 2, done.stderr
    message = one_line(done.stderr)
    assert f"no vLLM server ready at {url}" in message and "Start one" in message and "--served-model-name" in message
    assert not out.exists(), "nothing may run (or be recorded) without a server"


def start_server_process(port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(SUPPORT / "fault_server.py"), "--port", str(port), "--log", str(log)]
    process = subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("the fault server did not come up")


def answered_calls(log: Path) -> Counter[str]:
    """Item key -> how many of its chat requests the server answered."""
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return Counter(e["item_key"] for e in entries if "answered" in e)


def test_batch_survives_the_server_dying_and_retry_errors_finishes_it(tmp_path):
    keys = make_images(tmp_path / "images", 12)
    port = free_port()
    out = tmp_path / "results.jsonl"
    config = write_config(tmp_path / "vllm.yaml", f"http://127.0.0.1:{port}")
    command = ("batch", str(tmp_path / "images"), "--out", str(out), "--config", str(config), "-j", "2", "--no-traces")

    first_log = tmp_path / "first.jsonl"
    dying = start_server_process(port, first_log, "--die-after", "22")  # ~5 items of 4 calls, then it dies
    try:
        first = emo_r3(*command)
    finally:
        dying.kill()
        dying.wait()
    assert dying.returncode == 3, "the server should have died by itself mid-batch"
    assert first.returncode == 1, first.stderr  # items failed (ExitCode.FAILED); the others finished
    records = latest_records(out)
    assert set(records) == set(keys)
    answered = answered_calls(first_log)
    finished = {item for item, key in keys.items() if answered[key] == 4}  # all four calls answered
    ok = {item for item, record in records.items() if record["status"] == "ok"}
    assert ok == finished and 1 <= len(ok) < len(keys), (ok, answered)
    for item in set(keys) - ok:
        assert records[item]["termination"] == "error"
        assert "vLLM server unreachable" in records[item]["error"], records[item]["error"]
    assert f"{len(ok)} ok, {len(keys) - len(ok)} errors, 0 already done" in one_line(first.stderr)

    second_log = tmp_path / "second.jsonl"
    healthy = start_server_process(port, second_log)
    try:
        second = emo_r3(*command, "--retry-errors")
    finally:
        healthy.terminate()
        healthy.wait()
    assert second.returncode == 0, second.stderr
    assert all(record["status"] == "ok" for record in latest_records(out).values())
    redone = set(answered_calls(second_log))
    assert redone == {keys[item] for item in set(keys) - ok}, "only the failed items run again"
    assert f"{len(keys) - len(ok)} ok, 0 errors, {len(ok)} already done" in one_line(second.stderr)


def test_api_key_is_sent_as_bearer_and_never_stored(tmp_path, noise_image, monkeypatch):
    make_images(tmp_path / "images", 3)
    out, traces = tmp_path / "results.jsonl", tmp_path / "traces.sqlite"
    with FaultServer(api_key=SECRET) as server:
        config = write_config(tmp_path / "vllm.yaml", server.url, api_key_env="EMO_R3_TEST_KEY")
        args = ("batch", str(tmp_path / "images"), "--out", str(out), "--config", str(config))
        done = emo_r3(*args, "--with-trajectory", "--traces", str(traces), env={"EMO_R3_TEST_KEY": SECRET})
        monkeypatch.setenv("EMO_R3_TEST_KEY", SECRET)
        in_process = EmotionGraph.from_config(config).run(EmotionQuery(images=[noise_image]))
    assert done.returncode == 0, done.stderr
    assert len(server.requests) == 4 * 4 and in_process.ok
    assert {request["authorization"] for request in server.requests} == {f"Bearer {SECRET}"}
    records = latest_records(out)
    assert all(r["status"] == "ok" and r["trajectory"]["calls"] for r in records.values())
    stored = [out.read_bytes(), *(p.read_bytes() for p in tmp_path.glob("traces.sqlite*"))]
    assert traces.exists() and all(SECRET.encode() not in data for data in stored)
    assert SECRET not in done.stderr + done.stdout
    assert SECRET not in in_process.model_dump_json()


def test_sync_to_a_server_without_runtime_lora_updating_says_what_to_set(tmp_path: Path) -> None:
    """A server started without VLLM_ALLOW_RUNTIME_LORA_UPDATING has no /v1/load_lora_adapter (404)."""
    with FaultServer(models=["tiny"]) as server, pytest.raises(AdapterSyncError, match=RUNTIME_LORA_UPDATING):
        load_adapters(VLLMModelSpec(backend="vllm", base_url=server.url, model="tiny"), {"reasoner": tmp_path})


def test_adapter_sync_sends_the_api_key_of_the_model_spec(tmp_path, monkeypatch):
    """The key reaches the server (the wrong one is refused, the right one gets past the key check to the route)."""
    with FaultServer(api_key=SECRET) as server:
        spec = VLLMModelSpec(backend="vllm", base_url=server.url, model="tiny", api_key_env="EMO_R3_TEST_KEY")
        monkeypatch.setenv("EMO_R3_TEST_KEY", "not-the-key")
        with pytest.raises(AdapterSyncError, match=r"refused the API key.*EMO_R3_TEST_KEY"):
            load_adapters(spec, {"reasoner": tmp_path})
        monkeypatch.setenv("EMO_R3_TEST_KEY", SECRET)
        with pytest.raises(AdapterSyncError, match=RUNTIME_LORA_UPDATING):
            load_adapters(spec, {"reasoner": tmp_path})
