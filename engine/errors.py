"""User-facing errors: one line that names the key or file and what would fix it."""


class KdlensError(Exception):
    """An error caused by the user's input (params, data, files). Stages print it as one line."""
