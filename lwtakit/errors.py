"""One error type for bad user input.

Every entry point (``train.py``, ``analyze.py``) catches :class:`UserError`, prints its message as one
line prefixed with ``error:`` and exits with status 2. Raise it for anything the user can fix (a path, a
key, a shape, a missing weight file) and say *how* to fix it in the message.
"""

from __future__ import annotations

import argparse
import math


class UserError(Exception):
    """Bad input that the user can fix; the message is one line saying what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line: it is what the CLI prints.
        super().__init__(" ".join(str(message).split()))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless its help already says it, or there is none to show: None,
    False, a required option) and keeps descriptions and epilogs laid out as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == argparse.SUPPRESS  # `is`: 0 is a default
        if "default" in text.lower() or nothing or action.required or not action.option_strings:
            return text
        # argparse %-formats the help: a list default is written out here, its own % signs escaped
        shown = " ".join(map(str, default)).replace("%", "%%") if isinstance(default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the entry points' error format: one line ``error: ...`` and exit status 2 (argparse
    itself prints the whole usage block first); ``--help`` still shows the usage, with every default
    (:class:`HelpFormatter`, also for subcommands: ``add_parser`` builds this class)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, so that a count like ``--top-images -1`` is rejected before
    any work starts, as the one-line usage error of :class:`ArgumentParser`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"  # argparse names the type in some messages
    return parse


def float_at_least(minimum: float):
    """An argparse ``type``: a finite number >= ``minimum`` (:func:`int_at_least` for amounts like GiB)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a number >= {minimum}, got {text}")
        return value

    parse.__name__ = f"number >= {minimum}"
    return parse
