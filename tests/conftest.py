import copy
import shutil
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "cost(seconds): about how long the whole file takes under `make test` on "
                                       "2 CPU cores (a module's pytestmark); the costliest files start first")


def pytest_collection_modifyitems(items):
    """Costliest files first. `make test` hands whole files to its two workers in collection order
    (``--dist loadfile --no-loadscope-reorder``), each taking the next file when it is nearly done: a
    minutes-long pipeline file collected late would leave one worker idle while the other finishes it."""
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


def tiny_params() -> dict:
    """The project's params.yaml shrunk to seconds: small scenes, small nets, two epochs."""
    p = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["data"]["scenes"].update(n_train=192, n_test=96)
    for role in ("teacher", "student"):
        p[role]["arch"] = "resnet8"
        p[role]["train"].update(epochs=2, batch_size=32, eval_batch_size=96, keep_epochs=[])
    p["student"]["train"]["keep_epochs"] = [0, 2]
    p["student"]["structure"]["train"].update(epochs=2, batch_size=32, eval_batch_size=96, warmup_epochs=1,
                                              frozen_epochs={"routing": 1})  # ltb stage 1
    p["sigma"].update(n_images=4, steps=20, probe_step=15, noise_batch=4)  # the whole chain in seconds
    # Compiling the teacher costs a stage process seconds that a seconds-long training never earns back;
    # tests/test_teacher_cache.py and test_pipeline.py's project (compile on) cover it.
    p["trainer"]["compile_teacher"] = False
    return p


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
