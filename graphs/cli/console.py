"""Where `emo-r3` writes: rich consoles that behave on a terminal and stay plain text everywhere else.

On a terminal, output takes the terminal's width and styles. Anything else (a pipe, a file, CI, a test) gets text
that is never wrapped and never styled, whatever `COLUMNS` says: a long path stays on one line, so logs can be
grepped and tests can read them.

Anything that comes from data (a path, a label, a model's answer, a user's text) is printed through `data()`: as
plain `Text`, never read as rich markup (`[/x]` in an answer must not crash a listing), and with control characters
made visible (`\\x1b`), so a model's output or a crafted `--text` cannot drive the terminal with escape sequences.
"""

from __future__ import annotations

import re

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


# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that reorder shown text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(value: object) -> str:
    """`value` as text safe for a terminal: each control character becomes a visible escape (`\\x1b`, `\\u202e`)."""
    return _CONTROL.sub(lambda match: ascii(match[0])[1:-1], str(value))


def data(value: object, style: str = "") -> Text:
    """Data as a rich `Text`: shown literally, never as markup or terminal control."""
    return Text(shown(value), style=style)


out = console()
err = console(stderr=True)


def print_error(message: object, *, label: str = "error", style: str = "red") -> None:
    """`error: <message>` on stderr; the message is data (a path, a model's answer), never read as markup."""
    err.print(Text.assemble((f"{label}: ", style), data(message)))
