"""Any text from data through every terminal printer: never read as rich markup, never a terminal control.

Labels, answers, prompts, ids, paths and errors come from users and models. `[/x]` in one used to crash the printer
(and every later `traces list`); an escape sequence in a `--text` or an answer reached the terminal raw.
"""

from __future__ import annotations

import io
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console, RenderableType

from emo_r3.agents.call_record import LLMCall
from emo_r3.agents.chat_model import ChatMessage, SamplingParams
from emo_r3.agents.reflector import CoherenceVerdict, ConsistencyVerdict
from emo_r3.graphs.cli import console as consoles
from emo_r3.graphs.cli.run import print_result
from emo_r3.graphs.traces.records import RunDetail, RunSummary
from emo_r3.graphs.traces.terminal_views import run_diff, run_tree, runs_table
from emo_r3.graphs.trajectory import EmotionResult, Trajectory

MARKUP = "[bold]x[/bold] [/nope] [link=http://x]y"
# What may reach a terminal: printable text, tab and newline. Everything else must arrive escaped.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).map(lambda t: t + MARKUP)


def call(text: str) -> LLMCall:
    return LLMCall(
        role="reasoner", purpose="reason", node="reason", round=0, model_id=text, adapter=text,
        messages=[ChatMessage.user(text)], choices=[text, "awe"], sampling=SamplingParams(), text=text,
        prompt_token_ids=[1, 2], completion_token_ids=[3], logprobs=[-0.5], finish_reason="stop",
        parsed={"label": text}, error=text,
    )  # fmt: skip


def result(text: str) -> EmotionResult:
    trajectory = Trajectory(
        query_id=text, label_set=text, path=["perceive", text], calls=[call(text)], termination="error"
    )
    return EmotionResult(
        query_id=text, label=text, label_set=text, rationale=text, termination="max_rounds", error=text,
        coherence=CoherenceVerdict(implied_label=text, answered_label=text, passed=False),
        consistency=ConsistencyVerdict(answer="no", passed=False), trajectory=trajectory,
    )  # fmt: skip


def detail(text: str) -> RunDetail:
    summary = RunSummary(
        id=text, created_at=time.time(), source="run", query_id=text, input_ref=text, label_set=text, status="error",
        termination=text, label=text, format_ok=False, rounds=1, path=[text, "finalize"], error=text, latency_s=1.0,
        image_hashes=[],
    )  # fmt: skip
    return RunDetail(summary=summary, result=result(text), rewards={text: {text: 0.5}})


def rendered(*renderables: RenderableType) -> str:
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, color_system=None, width=120)
    for renderable in renderables:
        terminal.print(renderable)
    return buffer.getvalue()


def assert_safe(output: str) -> None:
    assert not CONTROL.search(output), repr(CONTROL.search(output)[0])
    assert "[/nope]" in output  # the markup-like text arrived as text


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_traces_list_show_and_diff(text: str) -> None:
    run = detail(text)
    assert_safe(rendered(runs_table([run.summary])))
    assert_safe(rendered(run_tree(run, full=True), run_tree(run)))
    assert_safe(rendered(*run_diff(run, detail(text[::-1]))))


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_run_output_and_errors(text: str, monkeypatch_consoles: tuple[io.StringIO, io.StringIO]) -> None:
    stdout, stderr = monkeypatch_consoles
    print_result(result(text))
    consoles.print_error(text)
    assert_safe(stdout.getvalue())
    assert_safe(stderr.getvalue())
    stdout.seek(0), stdout.truncate(), stderr.seek(0), stderr.truncate()


@pytest.fixture(scope="module")
def monkeypatch_consoles() -> tuple[io.StringIO, io.StringIO]:
    """The CLI's own consoles, writing as to a terminal (where markup and escapes would matter)."""
    with pytest.MonkeyPatch.context() as patch:
        buffers = io.StringIO(), io.StringIO()
        for name, buffer in zip(("out", "err"), buffers, strict=True):
            terminal = Console(file=buffer, force_terminal=True, color_system=None, width=120)
            patch.setattr(consoles, name, terminal)
            patch.setattr(f"emo_r3.graphs.cli.run.{name}", terminal)
        yield buffers


@pytest.mark.parametrize("text", ["\x1b]0;pwned\x07", "\x1b[31mred\x1b[0m", "a\rb", "\u202eevil", "\x9b31m"])
def test_known_escapes_show_as_escapes(text: str) -> None:
    assert consoles.shown(text) == ascii(text)[1:-1]
