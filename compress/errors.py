"""Errors a user can cause. The CLI prints the message on one line and exits 2."""


class CompressError(Exception):
    """Bad input or an unsupported model: the message says what is wrong and how to fix it."""


class CheckFailed(Exception):
    """A requested check (parity, budget) did not hold: the CLI exits 1."""


def first_line(e: BaseException, limit: int | None = 300, *, strip: bool = True, empty: str | None = None) -> str:
    """The first line of an exception's message (its type's name when the message is empty), at most
    `limit` characters (None: no cut): what one-line errors quote of an exception they wrap.
    strip=False takes the message as it is (leading blank lines or spaces included); `empty` replaces the
    type's name as what an empty message gives."""
    s = str(e).strip() if strip else str(e)
    return (s.splitlines()[0] if s else type(e).__name__ if empty is None else empty)[:limit]
