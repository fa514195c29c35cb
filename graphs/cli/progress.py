"""Live progress on stderr, only on a terminal: which node and correction round each running query is at, and for
`batch`/`eval` a bar over the items. Piped or redirected output gets none of it (just results and errors), so logs
and scripts never see spinners or carriage returns.
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from emo_r3.graphs.cli.console import data, err, shown
from emo_r3.graphs.progress import NodeStarted
from emo_r3.graphs.results_file import ResultRecord

SHOWN_QUERIES = 3  # running queries named on the status line; the rest are counted


class LiveProgress:
    """`node_started` is the graph's progress callback; `item_done` advances the bar (when there is one)."""

    def __init__(self, title: str, total: int | None = None, *, done: int = 0) -> None:
        self._running: dict[str, NodeStarted] = {}
        self._display: Progress | None = None
        if err.is_terminal:
            columns = [SpinnerColumn(), TextColumn(title)]
            if total is not None:
                columns += [BarColumn(), MofNCompleteColumn()]
            columns += [TimeElapsedColumn(), TextColumn("{task.fields[status]}", markup=False)]
            self._display = Progress(*columns, console=err, transient=total is None)
            self._task = self._display.add_task(title, total=total, completed=done, status="starting")

    def __enter__(self) -> LiveProgress:
        if self._display is not None:
            self._display.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._display is not None:
            self._display.stop()

    def node_started(self, event: NodeStarted) -> None:
        if event.node == "finalize":
            self._running.pop(event.query_id, None)
        else:
            self._running[event.query_id] = event
        self._refresh()

    def item_done(self, record: ResultRecord) -> None:
        """One item finished; a failed one is reported on its own line, terminal or not."""
        self._running.pop(record.id, None)
        if record.status == "error":
            err.print(Text.assemble(data(record.id, "yellow"), data(f": {record.error}")))
        if self._display is not None:
            self._display.update(self._task, advance=1)
        self._refresh()

    def _refresh(self) -> None:
        if self._display is None:
            return
        running = list(self._running.values())
        named = [_step(e, with_id=len(running) > 1) for e in running[:SHOWN_QUERIES]]
        more = [f"+{len(running) - SHOWN_QUERIES} more"] if len(running) > SHOWN_QUERIES else []
        # Drawn now, not at the next tick: a node shorter than the refresh interval would otherwise never show.
        self._display.update(self._task, status=shown(" · ".join(named + more)), refresh=True)


def _step(event: NodeStarted, *, with_id: bool) -> str:
    step = f"{event.node} (round {event.round})"
    return f"{event.query_id}: {step}" if with_id else step
