"""One error type for bad user input.

Every entry point (``train.py``, ``analyze.py``) catches :class:`UserError`, prints its message as one
line prefixed with ``error:`` and exits with status 2. Raise it for anything the user can fix (a path, a
key, a shape, a missing weight file) and say *how* to fix it in the message.
"""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input that the user can fix; the message is one line saying what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line: it is what the CLI prints.
        super().__init__(" ".join(str(message).split()))


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the entry points' error format: one line ``error: ...`` and exit status 2 (argparse
    itself prints the whole usage block first); ``--help`` still shows the usage."""

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
