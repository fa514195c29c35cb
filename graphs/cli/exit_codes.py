"""The exit codes of `emo-r3 run`, `batch` and `eval` (documented in the README), so scripts can tell outcomes apart."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the query failed, or some items of a batch/eval did: the others finished, the summary counts them
    USAGE = 2  # bad arguments, input, config or output path: nothing was run (also click's code for usage errors)
    STOPPED = 3  # stopped part-way because results could not be written (a full disk): all finished work is kept,
    # and the same command resumes
