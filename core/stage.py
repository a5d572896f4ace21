"""What every stage entry point shares: clean one-line errors and a resumable work directory."""
from __future__ import annotations

import fcntl
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

from .distributed import world
from .errors import KdlensError
from .paths import work_path


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a user error becomes one line on stderr and exit status 2."""
    try:
        main()
    except KdlensError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


@contextmanager
def work_dir(stage: str, key: str) -> Iterator[Path]:
    """A per-(stage, inputs) scratch directory that survives a killed run, so training can resume.

    DVC deletes a stage's outputs before running it, so resumable state lives outside them, under
    ``.dvc/tmp/kdlens/`` (git-ignored by DVC). It is removed once the stage succeeds. If another process
    already holds the same directory (two queued experiments with identical inputs), this one gets a
    private directory and simply does not resume. Under torchrun (core/distributed.py) rank 0 chooses,
    locks and finally removes it, and every rank uses rank 0's choice.
    """
    ranks = world()
    lock, path = _claim(stage, key) if ranks.main else (None, None)
    path = ranks.broadcast(path)
    try:
        yield path
    finally:
        if lock is not None:
            lock.close()
    if ranks.main:
        shutil.rmtree(path, ignore_errors=True)  # reached only when the body succeeded


def _claim(stage: str, key: str) -> tuple[IO | None, Path]:
    """The locked work directory of (stage, key), or a private one if another process holds it."""
    path = work_path(stage, key)
    path.mkdir(parents=True, exist_ok=True)
    lock = open(path / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None, Path(tempfile.mkdtemp(prefix=f"kdlens-{stage}-"))
    return lock, path
