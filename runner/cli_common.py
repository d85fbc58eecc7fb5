"""What every `corral` subcommand shares: exit codes, `--json` output, errors, and progress lines.

Exit codes are the same across commands: 0 success, 1 problems found or the act refused, 2 usage
errors or input that cannot be used. Output goes to stdout (one JSON document with `--json`);
diagnostics and progress go to stderr, progress only when stderr is a terminal and never with
`--json`. The commands themselves live in the `*_cli` modules.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final, TextIO

EXIT_OK: Final = 0
EXIT_PROBLEMS: Final = 1
EXIT_UNUSABLE: Final = 2


def exit_epilog(problems: str | None, unusable: str = "unusable input") -> str:
    """Return a `--help` epilog naming what exit status 1 (None: unused) and 2 mean here."""
    one = f" 1 {problems};" if problems else ""
    return f"exit status: 0 success;{one} 2 usage error, or {unusable}."


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """Add the `--json` flag every command has."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (see docs/cli.md)"
    )


def print_json(data: Any) -> None:
    """Print `data` as one line of JSON on stdout."""
    print(json.dumps(data, default=str))


def fail(code: str, message: str, as_json: bool, *, status: int, **extra: Any) -> int:
    """Report a failure (`{"error": code, "message": ...}` with `--json`) and return `status`."""
    if as_json:
        print_json({"error": code, "message": message, **extra})
    else:
        print(f"corral: {message}", file=sys.stderr)
    return status


class Progress:
    """`[i/n] name ... outcome` lines on stderr, shown only on a terminal and never with --json.

    A single item gets no progress line: its result is the output.
    """

    def __init__(self, total: int, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self._stream = stream or sys.stderr
        self._done = 0
        self.is_shown = total > 1 and not as_json and _is_terminal(self._stream)

    def step(self, name: str, outcome: str) -> None:
        """Report that one more item, `name`, ended with `outcome` (`ok`, `refused`, ...)."""
        self._done += 1
        if self.is_shown:
            print(f"[{self._done}/{self.total}] {name} ... {outcome}", file=self._stream)
            self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # a closed stream
        return False
