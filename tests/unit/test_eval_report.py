"""Evaluation reports as files: Markdown tables with labels, ids and errors escaped, a self-contained HTML page
(plots inline, nothing fetched) and the comparison's verdict first. Matplotlib draws the plots; no browser here:
the pages in Chromium are tests/servers/test_eval_report_browser.py."""

from __future__ import annotations

import html as html_module
import re
from pathlib import Path

import pytest
from eval_reports import write_reports


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    return write_reports(tmp_path_factory.mktemp("reports"))


def test_report_files_are_written_with_their_tables(reports):
    md, html = reports["mikels"]
    assert (md.name, html.name) == ("report.md", "report.html")
    text = md.read_text()
    for heading in ("## Headline", "## Per class", "## Confusion matrix", "## Reflection", "## Latency per node",
                    "## Tokens per item", "## Misclassified items", "## Errors"):  # fmt: skip
        assert heading in text
    assert "| label | precision | recall | F1 | support | predicted |" in text
    assert "| gold / predicted | amusement | awe |" in text and "(none) |" in text
    assert "flip: wrong → right" in text


def test_markdown_escapes_labels_ids_and_errors(reports):
    text = reports["hostile"][0].read_text() + reports["mikels"][0].read_text()
    assert not re.search(r"(?<!\\)<", text), "an unescaped < in the Markdown"
    assert r"\<script\>window.__pwned=1\</script\>" in text
    assert r"\<script\>window.__pwned=3\</script\> \| broken" in text  # the pipe cannot split the row
    for line in text.splitlines():
        if line.startswith("|") and "broken" in line:
            assert len(re.findall(r"(?<!\\)\|", line)) == 5  # 4 columns → 5 unescaped separators


def test_html_is_one_file_that_fetches_nothing(reports):
    for _, html in reports.values():
        page = html.read_text()
        tags = re.findall(r"<[a-zA-Z][^>]*>", page)  # real tags only: escaped text holds no "<"
        sources = [s for tag in tags for s in re.findall(r"""\s(?:src|href)\s*=\s*["']?([^"' >]+)""", tag)]
        assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
        assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
        assert "default-src 'none'" in html_module.unescape(page)


def test_comparison_markdown_leads_with_the_verdict(reports):
    text = reports["compare"][0].read_text()
    assert re.search(r"^\*\*(reflection is (better|worse) than baseline|no significant difference)", text, re.M)
    assert "## McNemar (exact)" in text and "## Per-class recall" in text and "95% CI" in text
