"""core/tracking.py: no credentials in what kdlens prints or writes, a quick probe of a tracking server,
and a killed stage's MLflow run resumed by its re-run instead of a second, unlinked run."""
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import mlflow
import pytest

from tiny_profile import ROOT
from core import tracking
from core.errors import KdlensError
from core.stage import work_dir
from core.tracking import StageRun, display_uri, scrub
from explain import compare

SECRET = "s3cretPW"
INPUTS = {"data_sha256": "0" * 64}
CLEARED = ("RANK", tracking.STRICT_ENV, "DVC_STAGE", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
           "MLFLOW_TRACKING_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
           "all_proxy")


@pytest.mark.parametrize("uri, shown", [
    ("sqlite:////abs/path/mlflow.db", "sqlite:////abs/path/mlflow.db"),
    ("http://u:p@h:5000/x", "http://h:5000/x"),
    ("https://token@h", "https://h"),
    ("file:///tmp/mlruns", "file:///tmp/mlruns"),
    ("file:mlruns", "file:mlruns"),
    ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg2://h/db"),
    ("http://alice:pa%40ss@[::1]:5000/mlflow", "http://[::1]:5000/mlflow"),
    ("https://h:443/?password=x&region=eu&api_token=t", "https://h:443/?region=eu"),
    ("http://h:5000?token=t", "http://h:5000"),
    ("databricks://profile:prefix", "databricks://profile:prefix"),
    ("./mlruns", "./mlruns"),
])
def test_display_uri_strips_credentials_only(uri, shown):
    assert display_uri(uri) == shown
    assert display_uri(shown) == shown


def test_scrub_removes_the_secret_from_free_text():
    uri = f"http://alice:{SECRET}@h:5000"
    text = (f"API request to {uri}/api/2.0/mlflow/runs/create failed: "
            f"HTTPConnectionPool(host='h', port=5000) url=http://alice:{SECRET}@h:5000/x, pw {SECRET}")
    out = scrub(text, uri)
    assert SECRET not in out and "alice:" not in out
    assert "http://h:5000/api/2.0/mlflow/runs/create" in out
    assert SECRET not in scrub(f"token in {SECRET}", f"https://{SECRET}@h")  # a token where the user goes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable(monkeypatch, tmp_path):
    """A credentialed tracking URI whose port nothing listens on."""
    for var in CLEARED:
        monkeypatch.delenv(var, raising=False)
    port = _free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:{port}/")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".dvc").mkdir()
    return port


def _untracked(stage="s") -> tuple[StageRun, list, float]:
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A collection during the run may finalise another test's leaked file: not this code's warning.
        warnings.simplefilter("ignore", ResourceWarning)
        with StageRun(stage, "scenes", {"a": 1}, "h") as run:
            run.log_metrics({"x": 1.0}, step=1)
            run.set_tags({"t": "v"})
    return run, [str(w.message) for w in caught], time.monotonic() - t0


def test_unreachable_server_is_one_warning_and_no_secret(unreachable, tmp_path, capfd):
    run, caught, took = _untracked()
    assert run.run_id is None and run.experiment_id is None
    assert took < 5, took  # not MLflow's minutes of retries
    assert len(caught) == 1, caught
    assert f"127.0.0.1:{unreachable}" in caught[0] and "the stage runs untracked" in caught[0]
    assert "\n" not in caught[0]
    out, err = capfd.readouterr()
    assert SECRET not in caught[0] + out + err
    assert not any(SECRET in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_a_server_that_never_answers_times_out(unreachable, monkeypatch):
    with socket.socket() as s:  # accepts the TCP connection (the kernel's backlog) and never replies
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:{port}")
        monkeypatch.setattr(tracking, "PROBE_TIMEOUT_S", 0.5)
        run, caught, took = _untracked()
    assert run.run_id is None and took < 3, took
    assert len(caught) == 1 and "no answer within 0.5 s" in caught[0] and SECRET not in caught[0], caught


def test_strict_tracking_stops_the_stage_in_one_line(unreachable, monkeypatch):
    monkeypatch.setenv(tracking.STRICT_ENV, "1")
    with pytest.raises(KdlensError) as e:
        with StageRun("s", "scenes", {"a": 1}, "h"):
            pytest.fail("the body must not run")
    msg = str(e.value)
    assert tracking.STRICT_ENV in msg and f"127.0.0.1:{unreachable}" in msg
    assert SECRET not in msg and "\n" not in msg


def test_an_mlflow_error_is_warned_without_the_secret(unreachable, monkeypatch, capfd):
    # Past the probe (as if the server went down just after it), MLflow's own error quotes the whole URL.
    monkeypatch.setattr(tracking, "probe_server", lambda uri, timeout=None: None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        run, caught, _ = _untracked()
    finally:
        mlflow.set_tracking_uri(None)
    assert run.run_id is None
    assert len(caught) == 1 and caught[0].startswith("MLflow start failed"), caught
    assert f"127.0.0.1:{unreachable}" in caught[0]
    out, err = capfd.readouterr()
    assert SECRET not in caught[0] + out + err


def test_other_ranks_neither_probe_nor_warn(unreachable, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    run, caught, took = _untracked()
    assert run.run_id is None and caught == [] and took < 1


def test_report_markdown_shows_no_credentials():
    from explain.report import markdown

    net = {"arch": "resnet8", "method": "kd", "test_top1": 1.0, "best_test_top1": 1.0, "params": 1,
           "method_extra_params": 0, "images_per_s": 1.0, "mlflow_run_id": None}
    report = {"method": "kd", "dataset": "scenes", "gain_over_baseline": 0.0, "teacher_test_top1": 1.0,
              "baseline_test_top1": 1.0, "student_test_top1": 1.0,
              "networks": {r: dict(net) for r in ("teacher", "baseline", "student")}}
    text = markdown(report, f"http://alice:{SECRET}@mlflow.internal:5000", "3")
    assert SECRET not in text and "`http://mlflow.internal:5000`" in text


# --- against a SQLite store: one store for the module, one experiment (dataset) per test ---------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, _mlflow_template_db):
    root = tmp_path_factory.mktemp("tracking")
    (root / ".dvc").mkdir()  # work directories (and run-id files) under root/.dvc/tmp/kdlens
    shutil.copy(_mlflow_template_db, root / "mlflow.db")
    return root, f"sqlite:///{root / 'mlflow.db'}"


@pytest.fixture
def project(store, monkeypatch):
    root, uri = store
    for var in CLEARED:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.chdir(root)
    yield mlflow.MlflowClient(uri)
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _runs(client, dataset):
    exp = client.get_experiment_by_name(tracking.experiment_name(dataset))
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def _steps(client, run_id, metric="m"):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, metric), key=lambda m: m.step)]


KILLED_STAGE = """
import os, signal, sys
sys.path.insert(0, {root!r})
from core.tracking import StageRun
run = StageRun.keyed("train_x", "resume", {{"a": 1}}, {inputs!r}, {{"device": "cpu"}}).__enter__()
run.log_metrics({{"m": 1.0}}, step=1)
run.log_metrics({{"m": 2.0}}, step=2)
print(run.run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no __exit__, no end_run: the run stays RUNNING
"""


def test_a_killed_stage_resumes_its_run(project, store):
    root, _ = store
    killed = subprocess.run([sys.executable, "-c", KILLED_STAGE.format(root=str(ROOT), inputs=INPUTS)],
                            cwd=root, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    old = killed.stdout.strip()
    assert project.get_run(old).info.status == "RUNNING"
    # The re-run (here on another device: not part of the key, so the same work directory resumes).
    with StageRun.keyed("train_x", "resume", {"a": 1}, INPUTS, {"device": "cuda"}) as run:
        assert run.run_id == old and run.resumed == 1
        run.log_metrics({"m": 3.0}, step=3)
        run.log_metrics({"m": 4.0}, step=4)
    runs = _runs(project, "resume")
    assert [r.info.run_id for r in runs] == [old]
    done = project.get_run(old)
    assert done.info.status == "FINISHED"
    assert _steps(project, old) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert done.data.tags["kdlens.resumed"] == "1" and "kdlens.resumed_from" not in done.data.tags
    assert done.data.params["device"] == "cpu" and done.data.tags["kdlens.resumed.device"] == "cuda"
    assert not tracking.run_file("train_x", run.key).parent.exists()  # finished: nothing left to resume


def test_a_finished_run_is_never_reopened(project):
    args = ("train_y", "finished", {"a": 1}, INPUTS)
    with StageRun.keyed(*args) as first:
        first.log_metrics({"m": 1.0}, step=1)
    path = tracking.run_file("train_y", first.key)
    assert not path.exists()
    # Killed after end_run, before the file went: the file names a FINISHED run.
    path.parent.mkdir(parents=True)
    path.write_text(first.run_id)
    with StageRun.keyed(*args) as second:  # e.g. `dvc repro -f`: the same key, a new run
        second.log_metrics({"m": 1.0}, step=1)
    assert second.run_id != first.run_id and second.resumed == 0
    runs = _runs(project, "finished")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert not any("kdlens.resumed_from" in r.data.tags for r in runs)
    assert _steps(project, first.run_id) == [(1, 1.0)]


def test_an_unresumable_run_is_killed_and_linked(project):
    args = ("train_z", "unresumable", {"a": 1}, INPUTS)
    key = StageRun.keyed(*args).key
    exp_id = project.create_experiment(tracking.experiment_name("unresumable"))
    stranger = project.create_run(exp_id, tags={"kdlens.stage": "train_z", "params_hash": "another key"})
    path = tracking.run_file("train_z", key)
    path.parent.mkdir(parents=True)
    path.write_text(stranger.info.run_id)  # a RUNNING run, but not this stage's
    with StageRun.keyed(*args) as run:
        pass
    assert run.run_id != stranger.info.run_id
    assert project.get_run(run.run_id).data.tags["kdlens.resumed_from"] == stranger.info.run_id
    assert project.get_run(stranger.info.run_id).info.status == "KILLED"
    gone = "f" * 32  # not in this store (another MLFLOW_TRACKING_URI, or deleted for good)
    path.parent.mkdir(parents=True)
    path.write_text(gone)
    with StageRun.keyed(*args) as run:
        pass
    assert run.run_id is not None and project.get_run(run.run_id).data.tags["kdlens.resumed_from"] == gone


def test_a_live_run_with_the_same_key_is_not_joined(project):
    args = ("train_w", "live", {"a": 1}, INPUTS)
    path = tracking.run_file("train_w", StageRun.keyed(*args).key)
    path.parent.mkdir(parents=True)
    path.write_text("e" * 32)
    with open(path) as other:  # another process's stage with identical inputs, still running
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with StageRun.keyed(*args) as run:
            pass
    assert run.run_id is not None and run.resumed == 0
    assert "kdlens.resumed_from" not in project.get_run(run.run_id).data.tags
    assert path.read_text() == "e" * 32  # the other run's record is left alone


def test_the_run_file_lives_in_the_stage_work_dir(project):
    with StageRun.keyed("train@v", "workdir", {"a": 1}, INPUTS) as run, work_dir("train@v", run.key) as wd:
        assert tracking.run_file("train@v", run.key) == wd / tracking.RUN_FILE
        assert (wd / tracking.RUN_FILE).read_text() == run.run_id
        run.log_metrics({"m": 1.0}, step=1)
    assert not wd.exists() and project.get_run(run.run_id).info.status == "FINISHED"


def test_the_printed_line_shows_no_credentials(project, store, monkeypatch, capfd):
    # A reachable credentialed server, played by the SQLite store: kdlens sees the http URI, MLflow the file.
    sqlite = store[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@mlflow.internal:5000")
    monkeypatch.setattr(tracking, "probe_server", lambda uri, timeout=None: None)
    real = mlflow.set_tracking_uri
    monkeypatch.setattr(mlflow, "set_tracking_uri", lambda uri: real(sqlite if uri else uri))
    with StageRun("s", "printed", {"a": 1}, "h") as run:
        pass
    assert run.run_id is not None
    err = capfd.readouterr().err
    assert f"[mlflow] run {run.run_id} in experiment 'kdlens-printed' at http://mlflow.internal:5000" in err
    assert SECRET not in err


def test_compare_refuses_an_unreachable_server_at_once_without_the_secret(unreachable, tmp_path, capfd):
    t0 = time.monotonic()
    assert compare.main(["--out", str(tmp_path / "compare.md")]) == 2
    assert time.monotonic() - t0 < 5
    err = capfd.readouterr().err
    assert f"error: MLflow tracking server http://127.0.0.1:{unreachable}/ is unreachable" in err
    assert SECRET not in err and not (tmp_path / "compare.md").exists()
