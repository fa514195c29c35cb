"""The trace viewer's pure parts: which hosts it may serve on, logprob colour buckets, the path diagram layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.traces.viewer.host_check import check_host, is_loopback
from emo_r3.graphs.traces.viewer.path_diagram import layout_path
from emo_r3.graphs.traces.viewer.server import make_server
from emo_r3.graphs.traces.viewer.tokens import logprob_bucket
from emo_r3.graphs.trajectory import Reflection


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """An empty trace store: the host check refuses before the viewer opens it or binds a port."""
    path = tmp_path / "traces.sqlite"
    TraceStore(path).close()
    return path


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::", "10.0.0.1"])
def test_non_loopback_hosts_are_refused_without_allow_remote(store_path, host):
    with pytest.raises(ValueError, match="--allow-remote"):
        make_server(store_path, host=host)
    check_host(host, allow_remote=True)  # allowed when asked for


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]"])
def test_loopback_hosts_are_accepted(host):
    assert is_loopback(host)
    check_host(host, allow_remote=False)


def test_logprob_buckets_order_confident_to_unlikely():
    buckets = [logprob_bucket(lp) for lp in (0.0, -0.1, -0.3, -0.7, -1.5, -3.0, -5.0, -9.0, -20.0, float("-inf"))]
    assert buckets == ["lp0", "lp1", "lp2", "lp3", "lp4", "lp5", "lp6", "lp7", "lp8", "lp8"]
    assert logprob_bucket(float("nan")) == logprob_bucket(None) == "lp-none"


def test_path_layout_puts_corrections_on_a_new_row():
    reflections = [Reflection(round=0, coherence=None, consistency=None, decision="revise_perception"),
                   Reflection(round=1, coherence=None, consistency=None, decision="stop")]  # fmt: skip
    path = ["perceive", "reason", "reflect", "perceive", "reason", "reflect", "finalize"]
    diagram = layout_path(path, reflections, "max_rounds")
    assert diagram is not None and [n.name for n in diagram.nodes] == path
    assert [e.kind for e in diagram.edges] == ["next", "next", "revise", "next", "next", "stop"]
    assert diagram.edges[2].label == "revise perception" and diagram.nodes[3].y > diagram.nodes[0].y
    assert layout_path([], [], "error") is None
    failed = layout_path(["perceive", "finalize"], [], "error")
    assert failed is not None and "node-failed" in failed.nodes[0].css and failed.edges[0].kind == "error"
