"""Errors a user can cause. The CLI prints the message on one line and exits 2."""


class CompressError(Exception):
    """Bad input or an unsupported model: the message says what is wrong and how to fix it."""


class CheckFailed(Exception):
    """A requested check (parity, budget) did not hold: the CLI exits 1."""
