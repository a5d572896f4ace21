"""User-facing errors: one line that names the key or file and what would fix it."""


class KdlensError(Exception):
    """An error caused by the user's input (params, data, files). Stages print it as one line."""


def one_line(e: BaseException) -> str:
    """A third-party exception as ``Type: message`` on one line, to quote inside a KdlensError or a log."""
    return f"{type(e).__name__}: {' '.join(str(e).split()) or 'no message'}"
