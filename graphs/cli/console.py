"""Where `emo-r3` writes: rich consoles that behave on a terminal and stay plain text everywhere else.

On a terminal, output takes the terminal's width and styles. Anything else (a pipe, a file, CI, a test) gets text
that is never wrapped and never styled, whatever `COLUMNS` says: a long path stays on one line, so logs can be
grepped and tests can read them. Data is printed as `Text` (or escaped), never as markup.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

# Wide enough that no line of ours is ever wrapped; tables and trees size to their content, not to this.
UNWRAPPED_WIDTH = 100_000


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that wraps and styles only on a terminal."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, soft_wrap=True, width=UNWRAPPED_WIDTH, highlight=False, emoji=False)


out = console()
err = console(stderr=True)


def print_error(message: object, *, label: str = "error", style: str = "red") -> None:
    """`error: <message>` on stderr; the message is data (a path, a model's answer), never read as markup."""
    err.print(Text.assemble((f"{label}: ", style), str(message)))
