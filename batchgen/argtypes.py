"""The command line's value types and completion marks, shared by the parser's modules (args.py, the run's
options in args_run.py, the simulator's in args_sim.py): values checked in the user's words, `N/SECONDS`."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from .errors import UsageError

T = TypeVar("T", int, float)

FILE = {"bash": "_shtab_compgen_files", "zsh": "_files"}  # shtab's FILE and DIRECTORY, without importing it
DIRECTORY = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}


def complete(action: argparse.Action, what: dict[str, str]) -> None:
    action.complete = what  # type: ignore[attr-defined]  # read by shtab for `batchgen completion`


def _value_type(parse: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> Callable[[str], T]:
    """An argparse `type=`: `parse` the text, accept it if `ok`; otherwise a message in the user's words (never
    argparse's "invalid positive_int value")."""

    def check(text: str) -> T:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return check


# NaN fails every comparison, so no range below admits it; inf is refused wherever a bound is open.
positive_int = _value_type(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _value_type(int, lambda v: v >= 0, "an integer >= 0")
positive_number = _value_type(float, lambda v: 0 < v < math.inf, "a number > 0")
non_negative_number = _value_type(float, lambda v: 0 <= v < math.inf, "a number >= 0")
share = _value_type(float, lambda v: 0 <= v <= 1, "a share between 0 and 1")
port = _value_type(int, lambda v: 0 <= v <= 65535, "a port number 0-65535")


def parse_rate(text: str, flag: str) -> tuple[int, float]:
    """`N/SECONDS` -> (N, SECONDS)."""
    count, sep, window = text.partition("/")
    try:
        parsed = int(count), float(window or "1")
    except ValueError:
        parsed = (0, 0.0)
    if not sep and window == "":
        parsed = (parsed[0], 1.0)
    if parsed[0] < 1 or parsed[1] <= 0:
        raise UsageError(f"{flag}: expected N/SECONDS with N >= 1 and SECONDS > 0, e.g. 20/10; got {text!r}")
    return parsed
