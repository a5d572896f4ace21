import fcntl
import shutil
import sys

import mlflow
import pytest
import torch

from pipeline_project import copy_project, reproduce, tiny_project
from tiny_profile import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "cost(seconds): about how long the whole file takes under `make test` on "
                                       "2 CPU cores (a module's pytestmark); the costliest files start first")


def pytest_collection_modifyitems(items):
    """Costliest files first. `make test` hands whole files to its two workers in collection order
    (``--dist loadfile --no-loadscope-reorder``), each taking the next file when it is nearly done: a
    minutes-long pipeline file collected late would leave one worker idle while the other finishes it.
    test_pipeline.py's cost includes building the reproduced project (``reproduced_project``), so it
    starts first; test_pipeline_students.py, which copies that project, costs less than the folder file
    and so starts after test_pipeline.py on the same worker, never waiting on the build's lock."""
    def cost(item):
        marker = item.get_closest_marker("cost")
        return marker.args[0] if marker else 0
    items[:] = sorted(items, key=lambda item: -cost(item))  # stable: a file's tests stay together, in order


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread in the test process: the tests' networks are tiny, and two threads on a shared
    two-core machine are far slower for them. (Pipeline stages run in subprocesses, unaffected.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("mlflow_tpl") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()  # run the schema migrations once
    return db


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, _mlflow_template_db):
    """A fresh SQLite tracking store for one test (copied from a migrated template: fast)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield mlflow.MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    """The tiny project, committed and not yet reproduced, for one test file."""
    return tiny_project(tmp_path_factory.mktemp("kdlens"))


@pytest.fixture(scope="session")
def reproduced_project(tmp_path_factory, worker_id):
    """The tiny project after one ``dvc repro`` (outputs committed), built once for the whole test run: the
    first `make test` worker to ask builds it while the others wait on a lock. Only copied, never changed
    (``reproduced_repo``)."""
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # xdist: the run's directory, above each worker's
    path, done = shared / "reproduced", shared / "reproduced.done"
    with open(shared / "reproduced.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            reproduce(tiny_project(path))
            done.touch()
    return path


@pytest.fixture(scope="module")
def reproduced_repo(reproduced_project, tmp_path_factory):
    """A copy of the reproduced tiny project for one test file to change as it likes."""
    return copy_project(reproduced_project, tmp_path_factory.mktemp("kdlens") / "repo")
