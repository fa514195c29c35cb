"""Evaluation reports: `report.md` (tables) and `report.html` (one self-contained page with embedded plots).

The HTML page loads nothing: styles are inline, plots are base64 PNGs drawn by matplotlib's Agg canvas, and a
Content-Security-Policy forbids scripts and any fetch. Labels, item ids and error messages come from users and
models, so every value is escaped (Jinja autoescape in HTML; `md_cell` in Markdown).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emo_r3.evals.compare import METRIC_NAMES, BootstrapCI, Comparison, format_p, paired_values, pct, pts
from emo_r3.evals.metrics import EvalMetrics
from emo_r3.evals.predictions import PredictionRecord

MAX_ITEM_ROWS = 50  # misclassified items and errors listed per report
MAX_TICK_CHARS = 18
DPI = 100  # figures are sized in inches for ~600 CSS pixels, so text stays legible at 1×
MAX_ERROR_CHARS = 300
MARKDOWN_SPECIAL = frozenset("\\`*[]<>&|")
FLIP_NAMES = {
    "wrong_to_right": "wrong → right", "right_to_wrong": "right → wrong",
    "wrong_to_wrong_changed": "wrong → wrong (changed)", "unchanged": "unchanged",
}  # fmt: skip
FLIP_COLOURS = ("#2e8b57", "#c0392b", "#e67e22", "#95a5a6")
# No script source at all, no fetch of any kind: the page is one file and must stay inert wherever it is opened.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Table:
    """A titled table of already formatted cells; `shades` (0..1 per body cell) colours a heatmap table."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    shades: list[list[float]] | None = None
    key: str = ""
    numeric_from: int = 1  # columns from this index on hold numbers and are right-aligned

    def align(self, column: int) -> str:
        return "num" if column >= self.numeric_from else "text"

    def cell_style(self, row: int, column: int) -> str:
        """Inline CSS for a heatmap cell (the first column holds the row's label and stays plain)."""
        if not self.shades or column == 0:
            return ""
        shade = self.shades[row][column - 1]
        text = "#fff" if shade > 0.55 else "#1d2430"
        return f"background-color: rgba(76, 114, 176, {shade * 0.85:.2f}); color: {text}"


@dataclass(frozen=True)
class Plot:
    key: str
    caption: str
    png: bytes = field(repr=False)

    @property
    def data(self) -> str:
        return base64.b64encode(self.png).decode("ascii")


# ---------------------------------------------------------------- formatting


def secs(value: float) -> str:
    return f"{value:.3f} s"


def md_cell(text: str) -> str:
    """A value made safe for one Markdown table cell: markup characters backslash-escaped (so `<script>` is
    text, not raw HTML), `|` cannot break the row, line breaks become spaces."""
    escaped = "".join("\\" + ch if ch in MARKDOWN_SPECIAL else ch for ch in text)
    return " ".join(escaped.splitlines())


def meta_value(value: Any) -> str:
    """A run-metadata value as one short line: lists as "N: a, b, …", None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, list | tuple | set):
        return shorten(f"{len(value)}: " + ", ".join(map(str, value)), MAX_ERROR_CHARS) if value else "none"
    return shorten(str(value), MAX_ERROR_CHARS)


def tick(label: str) -> str:
    """A label for a plot axis: shortened, and `$` escaped so matplotlib never parses it as mathtext."""
    short = label if len(label) <= MAX_TICK_CHARS else label[: MAX_TICK_CHARS - 1] + "…"
    return short.replace("$", r"\$")


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- tables


Headline = tuple[str, str, str]  # (name, value, detail)


def headline_rows(metrics: EvalMetrics) -> list[Headline]:
    statuses = ", ".join(f"{s} {n}" for s, n in metrics.status_counts.items())
    return [
        ("Items", str(metrics.n), metrics.label_set),
        ("Accuracy", pct(metrics.accuracy), f"{metrics.n_correct} of {metrics.n} right"),
        ("Macro-F1", pct(metrics.macro_f1), ""),
        ("Weighted-F1", pct(metrics.weighted_f1), ""),
        ("Sentiment accuracy", pct(metrics.sentiment_accuracy), f"positive/negative, n={metrics.sentiment_n}"),
        ("Format success", pct(metrics.format_rate), ""),
        ("Accept rate", pct(metrics.reflection.accept_rate), ""),
        ("Errors", str(metrics.n_errors), statuses),
    ]


def per_class_table(metrics: EvalMetrics) -> Table:
    rows = [[c.label, pct(c.precision), pct(c.recall), pct(c.f1), str(c.support), str(c.predicted)]
            for c in metrics.per_class]  # fmt: skip
    return Table("Per class", ["label", "precision", "recall", "F1", "support", "predicted"], rows, key="per-class")


def confusion_table(metrics: EvalMetrics) -> Table:
    counts = np.asarray(metrics.confusion, dtype=float)
    shades = (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).tolist()
    rows = [[label, *map(str, row)] for label, row in zip(metrics.labels, metrics.confusion, strict=True)]
    note = "rows: gold label; columns: prediction; (none): missing or outside the label set; shade: share of the row"
    return Table("Confusion matrix", ["gold / predicted", *metrics.columns], rows, note, shades, key="confusion")


def reflection_table(metrics: EvalMetrics) -> Table:
    r = metrics.reflection
    rows = [
        ["accept rate", pct(r.accept_rate)],
        [f"coherence pass rate (all {r.coherence_checks} checks)", pct(r.coherence_pass_rate)],
        ["coherence pass rate (first round)", pct(r.coherence_first_pass_rate)],
        [f"consistency pass rate (all {r.consistency_checks} checks)", pct(r.consistency_pass_rate)],
        ["consistency pass rate (first round)", pct(r.consistency_first_pass_rate)],
        ["corrections (answers sent back)", str(r.corrections)],
        ["items corrected", f"{r.corrected_items} ({pct(r.correction_rate)})"],
        *([f"flip: {name}", str(getattr(r.flips, key))] for key, name in FLIP_NAMES.items()),
        ["no first answer", str(r.flips.without_first_label)],
    ]
    return Table("Reflection", ["statistic", "value"], rows, key="reflection")


def latency_table(metrics: EvalMetrics) -> Table:
    rows = [[n.node, str(n.n), secs(n.mean_s), secs(n.p50_s), secs(n.p95_s)] for n in metrics.latency]
    return Table("Latency per node", ["node", "items", "mean", "p50", "p95"], rows,
                 "" if rows else "no node timings recorded", key="latency")  # fmt: skip


def token_table(metrics: EvalMetrics) -> Table:
    t = metrics.tokens
    rows = [["prompt", f"{t.prompt_mean:.1f}", str(t.prompt_total)],
            ["completion", f"{t.completion_mean:.1f}", str(t.completion_total)]]  # fmt: skip
    return Table("Tokens per item", ["tokens", "mean", "total"], rows, key="tokens")


def misclassified_table(records: Sequence[PredictionRecord]) -> Table:
    wrong = [r for r in records if r.prediction != r.label and r.status == "ok"]
    rows = [[r.id, r.label, r.first_label or "—", r.prediction or "—", "yes" if r.accepted else "no", str(r.rounds)]
            for r in wrong[:MAX_ITEM_ROWS]]  # fmt: skip
    note = f"first {MAX_ITEM_ROWS} of {len(wrong)}" if len(wrong) > MAX_ITEM_ROWS else f"{len(wrong)} items"
    return Table("Misclassified items", ["id", "gold", "first answer", "final answer", "accepted", "corrections"],
                 rows, note, key="misclassified", numeric_from=5)  # fmt: skip


def error_table(records: Sequence[PredictionRecord]) -> Table:
    failed = [r for r in records if r.status != "ok"]
    rows = [[r.id, r.status, r.termination or "—", shorten(r.error or "", MAX_ERROR_CHARS)]
            for r in failed[:MAX_ITEM_ROWS]]  # fmt: skip
    note = f"first {MAX_ITEM_ROWS} of {len(failed)}" if len(failed) > MAX_ITEM_ROWS else f"{len(failed)} items"
    return Table("Errors", ["id", "status", "termination", "error"], rows, note, key="errors", numeric_from=4)


def report_tables(metrics: EvalMetrics, records: Sequence[PredictionRecord]) -> list[Table]:
    return [
        per_class_table(metrics), confusion_table(metrics), reflection_table(metrics), latency_table(metrics),
        token_table(metrics), error_table(records), misclassified_table(records),
    ]  # fmt: skip


# ---------------------------------------------------------------- plots


def png(fig: Figure) -> bytes:
    """The figure rendered by the Agg canvas (no pyplot, no global backend state)."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


def confusion_plot(metrics: EvalMetrics) -> bytes:
    """Heatmap of row shares (recall per gold label) annotated with counts."""
    counts = np.asarray(metrics.confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.2, 1.4 + 0.5 * len(metrics.columns)), 9.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{int(count)}", ha="center", va="center", fontsize=9,
                color="white" if shares[i, j] > 0.55 else "#222")  # fmt: skip
    ax.set_xticks(range(len(metrics.columns)), [tick(c) for c in metrics.columns], rotation=40, ha="right")
    ax.set_yticks(range(len(metrics.labels)), [tick(label) for label in metrics.labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("Confusion matrix (shade: share of gold row)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return png(fig)


def per_class_plot(metrics: EvalMetrics) -> bytes:
    """Grouped bars: precision, recall and F1 for each label."""
    fig = Figure(figsize=(max(6.0, 1.0 + 0.7 * len(metrics.labels)), 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(metrics.labels))
    for offset, (name, colour) in zip((-0.27, 0, 0.27), (("precision", "#4c72b0"), ("recall", "#dd8452"),
                                                        ("f1", "#55a868")), strict=True):  # fmt: skip
        ax.bar(x + offset, [getattr(c, name) for c in metrics.per_class], 0.27, label=name.replace("f1", "F1"),
               color=colour)  # fmt: skip
    ax.set_xticks(x, [tick(label) for label in metrics.labels], rotation=30, ha="right")
    ax.set_ylim(0, 1.16)
    ax.set_ylabel("score")
    ax.set_title("Per-class precision, recall, F1")
    ax.legend(ncols=3, loc="upper center", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


def flips_plot(metrics: EvalMetrics) -> bytes:
    """Bars: how reflection changed first answers into final ones."""
    flips = metrics.reflection.flips
    values = [getattr(flips, key) for key in FLIP_NAMES]
    fig = Figure(figsize=(6.0, 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(list(FLIP_NAMES.values()), values, color=FLIP_COLOURS)
    ax.bar_label(bars, padding=2)
    ax.set_ylim(0, max([*values, 1]) * 1.15)
    ax.set_ylabel("items")
    ax.set_title("Reflection flips: first answer → final answer")
    ax.tick_params(axis="x", labelrotation=15)
    return png(fig)


def recall_plot(comparison: Comparison) -> bytes:
    """Grouped bars: recall per label in run A and run B."""
    deltas = comparison.recall_deltas
    fig = Figure(figsize=(max(6.0, 1.0 + 0.7 * len(deltas)), 4.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(deltas))
    ax.bar(x - 0.2, [d.recall_a for d in deltas], 0.4, label=tick(comparison.name_a), color="#4c72b0")
    ax.bar(x + 0.2, [d.recall_b for d in deltas], 0.4, label=tick(comparison.name_b), color="#dd8452")
    ax.set_xticks(x, [tick(d.label) for d in deltas], rotation=30, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall")
    ax.set_title("Per-class recall")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return png(fig)


# ---------------------------------------------------------------- rendering


def markdown_table(table: Table) -> str:
    lines = [f"## {md_cell(table.title)}", ""]
    if table.note:
        lines += [f"_{md_cell(table.note)}_", ""]
    if table.rows:
        lines += [
            "| " + " | ".join(md_cell(h) for h in table.headers) + " |",
            "|" + "|".join("---:" if table.align(i) == "num" else "---" for i in range(len(table.headers))) + "|",
            *("| " + " | ".join(md_cell(c) for c in row) + " |" for row in table.rows),
        ]
    elif not table.note:
        lines.append("(none)")
    return "\n".join(lines)


def markdown_document(title: str, meta: dict[str, Any], head: list[Headline], tables: list[Table]) -> str:
    heading = Table("Run", ["key", "value"], [[str(k), meta_value(v)] for k, v in meta.items()], numeric_from=2)
    summary = Table("Headline", ["metric", "value", "detail"], [list(row) for row in head], numeric_from=1)
    shown = [heading, summary, *tables] if meta else [summary, *tables]
    parts = [f"# {md_cell(title)}", *(markdown_table(t) for t in shown)]
    return "\n\n".join(parts) + "\n"


def render_markdown(
    metrics: EvalMetrics, records: Sequence[PredictionRecord], *, title: str, meta: dict[str, Any]
) -> str:
    return markdown_document(title, meta, headline_rows(metrics), report_tables(metrics, records))


HTML_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2430;
         background: #f6f7f9; margin: 0; }
  main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
  h1 { font-size: 26px; margin: 0 0 6px; }
  h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #d8dce3; padding-bottom: 4px; }
  .verdict { font-size: 18px; font-weight: 600; background: #fff; border-left: 5px solid #4c72b0;
             padding: 10px 14px; margin: 14px 0; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; margin: 16px 0; }
  .card { background: #fff; border: 1px solid #d8dce3; border-radius: 8px; padding: 10px 14px; }
  .card .name { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #5b6575; }
  .card .value { font-size: 24px; font-weight: 600; overflow-wrap: anywhere; }
  .card .detail { font-size: 12px; color: #5b6575; overflow-wrap: anywhere; }
  .plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 14px; }
  figure { background: #fff; border: 1px solid #d8dce3; border-radius: 8px; margin: 0; padding: 10px; }
  figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
  figcaption { font-size: 13px; color: #5b6575; text-align: center; margin-top: 4px; }
  table { border-collapse: collapse; background: #fff; font-size: 14px; margin: 4px 0 8px; }
  th, td { border: 1px solid #d8dce3; padding: 4px 10px; text-align: left; overflow-wrap: anywhere; max-width: 520px; }
  .num { text-align: right; }
  th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
  tbody tr:nth-child(even) td { background-color: #fafbfc; }
  td { font-variant-numeric: tabular-nums; }
  .note { font-size: 13px; color: #5b6575; margin: 0 0 4px; }
  .meta td, .meta th { text-align: left; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
{% if meta %}<table class="meta"><tbody>
{% for key, value in meta %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if verdict %}<p class="verdict" id="verdict">{{ verdict }}</p>{% endif %}
<section class="cards" id="headline">
{% for name, value, detail in head %}<div class="card"><div class="name">{{ name }}</div>
  <div class="value">{{ value }}</div><div class="detail">{{ detail }}</div></div>
{% endfor %}</section>
<section class="plots">
{% for plot in plots %}<figure><img id="plot-{{ plot.key }}" class="plot" alt="{{ plot.caption }}"
  src="data:image/png;base64,{{ plot.data }}"><figcaption>{{ plot.caption }}</figcaption></figure>
{% endfor %}</section>
{% for table in tables %}
<h2>{{ table.title }}</h2>
{% if table.note %}<p class="note">{{ table.note }}</p>{% endif %}
{% if table.rows %}<table id="table-{{ table.key }}">
<thead><tr>{% for h in table.headers %}<th class="{{ table.align(loop.index0) }}">{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}{% set i = loop.index0 %}<tr>
{%- for cell in row %}<td class="{{ table.align(loop.index0) }}"
  {%- if table.shades %} style="{{ table.cell_style(i, loop.index0) }}"{% endif %}>{{ cell }}</td>
{%- endfor %}</tr>
{% endfor %}</tbody></table>{% elif not table.note %}<p class="note">(none)</p>{% endif %}
{% endfor %}
</main>
</body>
</html>
"""

_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def html_document(
    title: str,
    meta: dict[str, Any],
    head: list[Headline],
    plots: list[Plot],
    tables: list[Table],
    verdict: str = "",
) -> str:
    """The self-contained page; every value goes through Jinja's autoescape."""
    return _ENVIRONMENT.from_string(HTML_TEMPLATE).render(
        csp=CONTENT_SECURITY_POLICY, title=title, meta=[(str(k), meta_value(v)) for k, v in meta.items()], head=head,
        plots=plots, tables=tables, verdict=verdict,
    )  # fmt: skip


def report_plots(metrics: EvalMetrics) -> list[Plot]:
    return [
        Plot("confusion", "Confusion matrix", confusion_plot(metrics)),
        Plot("per-class", "Per-class precision / recall / F1", per_class_plot(metrics)),
        Plot("flips", "Reflection flips", flips_plot(metrics)),
    ]


def render_html(metrics: EvalMetrics, records: Sequence[PredictionRecord], *, title: str, meta: dict[str, Any]) -> str:
    return html_document(title, meta, headline_rows(metrics), report_plots(metrics), report_tables(metrics, records))


def write_report(
    metrics: EvalMetrics, records: Sequence[PredictionRecord], out_dir: Path, *, title: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into out_dir (created if missing); returns (md path, html path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, html = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(metrics, records, title=title, meta=meta), encoding="utf-8")
    html.write_text(render_html(metrics, records, title=title, meta=meta), encoding="utf-8")
    return md, html


# ---------------------------------------------------------------- comparison


def comparison_head(c: Comparison) -> list[Headline]:
    level = f"{c.confidence * 100:g}% CI"
    unpaired = f"{len(c.only_in_a)} only in {c.name_a}, {len(c.only_in_b)} only in {c.name_b}"
    return [
        ("Paired items", str(c.n_paired), unpaired),
        ("Accuracy Δ", f"{pts(c.accuracy_ci.delta)} pts", f"{level} {interval(c.accuracy_ci)}"),
        ("Macro-F1 Δ", f"{pts(c.macro_f1_ci.delta)} pts", f"{level} {interval(c.macro_f1_ci)}"),
        ("McNemar", format_p(c.mcnemar.p_value), f"{c.mcnemar.a_only_right} vs {c.mcnemar.b_only_right} discordant"),
    ]


def interval(ci: BootstrapCI) -> str:
    return f"[{pts(ci.low)}, {pts(ci.high)}]"


def comparison_tables(c: Comparison) -> list[Table]:
    level = f"{c.confidence * 100:g}% CI"
    cis = {"accuracy": c.accuracy_ci, "macro_f1": c.macro_f1_ci}
    rows = [[METRIC_NAMES[name], pct(va), pct(vb), pts(c.deltas[name]),
             interval(cis[name]) if name in cis else "—"]
            for name, va, vb in paired_values(c.metrics_a, c.metrics_b)]  # fmt: skip
    deltas = Table(f"Metrics ({c.name_b} − {c.name_a})", ["metric", c.name_a, c.name_b, "Δ pts", level], rows,
                   f"paired bootstrap, {c.n_resamples} resamples, seed {c.seed}", key="deltas")  # fmt: skip
    m = c.mcnemar
    mcnemar = Table(
        "McNemar (exact)", ["", f"{c.name_b} right", f"{c.name_b} wrong"],
        [[f"{c.name_a} right", str(m.both_right), str(m.a_only_right)],
         [f"{c.name_a} wrong", str(m.b_only_right), str(m.both_wrong)]],
        f"two-sided exact binomial test on the discordant pairs: {format_p(m.p_value)} (p = {m.p_value:.4g})",
        key="mcnemar",
    )  # fmt: skip
    recall = Table("Per-class recall", ["label", "support", c.name_a, c.name_b, "Δ pts"],
                   [[d.label, str(d.support), pct(d.recall_a), pct(d.recall_b), pts(d.delta)]
                    for d in c.recall_deltas], key="recall")  # fmt: skip
    unpaired = Table("Unpaired items", ["run", "id"],
                     [[c.name_a, i] for i in c.only_in_a[:MAX_ITEM_ROWS]]
                     + [[c.name_b, i] for i in c.only_in_b[:MAX_ITEM_ROWS]],
                     f"{len(c.only_in_a)} only in {c.name_a}, {len(c.only_in_b)} only in {c.name_b}; left out",
                     key="unpaired", numeric_from=2)  # fmt: skip
    return [deltas, mcnemar, recall, unpaired]


def write_comparison(comparison: Comparison, out_dir: Path, *, title: str, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write `comparison.md` and `comparison.html` into out_dir; returns (md path, html path)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    head, tables = comparison_head(comparison), comparison_tables(comparison)
    md, html = out_dir / "comparison.md", out_dir / "comparison.html"
    verdict_md = f"**{md_cell(comparison.verdict)}**\n\n"
    body = markdown_document(title, meta, head, tables)
    first_section = body.index("\n\n## ") + 2
    md.write_text(body[:first_section] + verdict_md + body[first_section:], encoding="utf-8")
    plots = [Plot("recall", "Per-class recall", recall_plot(comparison))]
    html.write_text(html_document(title, meta, head, plots, tables, comparison.verdict), encoding="utf-8")
    return md, html
