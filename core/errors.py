"""User-facing errors: one line that names the key or file and what would fix it."""


class KdlensError(Exception):
    """An error caused by the user's input (params, data, files). Stages print it as one line."""


def first_sentence(e: BaseException) -> str:
    """The first sentence of a third-party message (torch's run on for lines), whole: quoted in one line."""
    text = " ".join(str(e).split())
    end = text.find(". ")
    return (text[:end + 1] if end >= 0 else text) or type(e).__name__


def one_line(e: BaseException) -> str:
    """A third-party exception as ``Type: message`` on one line, to quote inside a KdlensError or a log."""
    return f"{type(e).__name__}: {' '.join(str(e).split()) or 'no message'}"
