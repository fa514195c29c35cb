"""The trace viewer's pure parts: which hosts it may serve on and which Host headers it answers (no DNS rebinding),
logprob colour buckets, the path diagram layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo_r3.graphs.traces.store import TraceStore
from emo_r3.graphs.traces.viewer.host_check import HostHeaderCheck, check_host, host_header_name, is_loopback
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


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8765", "localhost"),
        ("localhost.", "localhost"),
        ("localhost:", "localhost"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:8765", "::1"),
        ("[::1]", "::1"),
        ("attacker.example:8765", "attacker.example"),
        ("::1", None),  # IPv6 needs brackets in a Host header
        ("", None),
        ("  ", None),
        ("a b", None),
        ("localhost:port", None),
        ("localhost:80:80", None),
        ("[::1", None),
        ("[::1]x", None),
        ("[localhost]", None),
        ("user@localhost", None),
        ("localhost/evil", None),
    ],
)
def test_host_header_parsing(header, name):
    assert host_header_name(header) == name


FORGED_HOSTS = ["attacker.example", "attacker.example:8765", "localhost.attacker.example", "127.0.0.1.nip.io",
                "127.0.0.1.nip.io:8765", "", "::1", "0.0.0.0", "10.0.0.5:8765", "[::ffff:7f00:1]"]  # fmt: skip
LOOPBACK_HOSTS = ["localhost", "localhost:8765", "LOCALHOST", "127.0.0.1", "127.0.0.1:8765", "127.9.9.9:1",
                  "[::1]:8765", "[::1]", "ip6-localhost:8765"]  # fmt: skip


def test_a_loopback_viewer_answers_loopback_host_headers_only():
    check = HostHeaderCheck.for_server("127.0.0.1", allow_remote=False)
    assert all(check.allows([host]) for host in LOOPBACK_HOSTS)
    assert not any(check.allows([host]) for host in FORGED_HOSTS)
    assert not check.allows([]) and not check.allows(["localhost", "localhost"])  # missing, or more than one
    assert check.describe() == "localhost or a loopback address"


def test_a_remote_viewer_also_answers_its_own_host_and_the_allowed_names():
    remote = HostHeaderCheck.for_server("10.1.2.3", allow_remote=True, allowed_hosts=["Traces.Example.Org"])
    assert all(remote.allows([h]) for h in ["10.1.2.3:8765", "traces.example.org", "traces.example.org.", "localhost"])
    assert not any(remote.allows([h]) for h in ["attacker.example", "10.9.9.9", "10.1.2.3.nip.io"])
    assert "10.1.2.3" in remote.describe() and "traces.example.org" in remote.describe()
    everywhere = HostHeaderCheck.for_server("0.0.0.0", allow_remote=True)  # IP addresses cannot be re-pointed
    assert all(everywhere.allows([h]) for h in ["10.9.9.9:8765", "[fe80::1]:8765", "192.168.1.10"])
    assert not any(everywhere.allows([h]) for h in ["attacker.example", "10.9.9.9.nip.io", "0.0.0.0.example"])
    v6 = HostHeaderCheck.for_server("[2001:db8::7]", allow_remote=True)
    assert v6.allows(["[2001:db8::7]:8765"]) and not v6.allows(["[2001:db8::8]:8765"])
    with pytest.raises(ValueError, match="--allow-remote"):  # a remote name needs the same explicit decision
        HostHeaderCheck.for_server("127.0.0.1", allow_remote=False, allowed_hosts=["traces.example.org"])


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
