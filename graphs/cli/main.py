"""`emo-r3`: the root command. Each subcommand's module is imported only when that subcommand runs.

`emo-r3 --help` lists the commands from the table below without importing them, so it (and `emo-r3 traces list`)
starts in a fraction of a second: no torch, no matplotlib. Packages built on graphs (`eval` from evals, `train` from
training) register under the `emo_r3.commands` entry-point group, so graphs never imports them.
"""

from __future__ import annotations

import importlib
import signal
from dataclasses import dataclass
from importlib.metadata import entry_points, version
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

PLUGIN_GROUP = "emo_r3.commands"


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand by where it lives (`module:attribute`, a Typer app) and its one-line help."""

    target: str
    help: str


COMMANDS: dict[str, LazyCommand] = {
    "run": LazyCommand("emo_r3.graphs.cli.run:run_app", "Recognise the emotion one image evokes, and show the path."),
    "batch": LazyCommand("emo_r3.graphs.cli.batch:batch_app", "Run many queries, resumably, into a results JSONL."),
    "traces": LazyCommand("emo_r3.graphs.traces.cli:traces_app", "Inspect recorded runs: list, show, diff, serve."),
    "models": LazyCommand("emo_r3.graphs.cli.models:models_app", "Build the offline models (no network needed)."),
}


def _load(target: str, name: str) -> Any:
    module_name, _, attribute = target.partition(":")
    command = typer.main.get_command(getattr(importlib.import_module(module_name), attribute))
    command.name = name
    return command


def _plugins() -> dict[str, str]:
    return {entry.name: entry.value for entry in entry_points(group=PLUGIN_GROUP) if entry.name not in COMMANDS}


class LazyGroup(TyperGroup):
    """The built-in commands from `COMMANDS`, plus plugins from entry points; each is loaded on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*COMMANDS, *sorted(_plugins())]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in COMMANDS:
            return _load(COMMANDS[cmd_name].target, cmd_name)
        target = _plugins().get(cmd_name)
        if target is None:
            return None
        try:
            return _load(target, cmd_name)
        except ImportError as error:  # a broken plugin must not take the other commands down with it
            return _unavailable(cmd_name, error)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Help for built-ins from the table (nothing imported); plugins are loaded, cheaply, for theirs."""
        rows = [(name, command.help) for name, command in COMMANDS.items()]
        rows += [(name, self.get_command(ctx, name).get_short_help_str(limit=80)) for name in sorted(_plugins())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, error: ImportError) -> Any:
    app = typer.Typer(add_completion=False)

    @app.command(name=name, help=f"(unavailable: {error})")
    def fail() -> None:
        from emo_r3.graphs.cli.console import print_error

        print_error(f"`emo-r3 {name}` is unavailable: {error}")
        raise typer.Exit(2)

    return typer.main.get_command(app)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(f"emo-r3 {version('emo-r3')}")
        raise typer.Exit()


app = typer.Typer(
    cls=LazyGroup,
    name="emo-r3",
    help="EMO-R3: reflective emotional reasoning over images.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # plain help: rich help would import every subcommand to list them
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    show_version: Annotated[
        bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """EMO-R3: reflective emotional reasoning over images."""


def main() -> None:
    # Under a file-size limit (`ulimit -f`) the kernel would kill the process mid-write; with the signal ignored the
    # write fails with EFBIG instead, and the command stops cleanly, keeping every result it finished.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    app(prog_name="emo-r3")


if __name__ == "__main__":
    main()
