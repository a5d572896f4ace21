"""The team set-up, for real, on the tiny profile: a PostgreSQL-backed MLflow server (`make server`) that
pipeline stages log to with nothing but MLFLOW_TRACKING_URI set, and a DVC remote from which a second
clone gets the prepared data and the teacher instead of retraining them.
"""
import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tiny_profile import ROOT
from pipeline_project import BIN, free_port, run_cmd

pytestmark = pytest.mark.cost(55)


@pytest.fixture(scope="module")
def repo(tiny_repo):
    return tiny_repo

STAGES = ["check_params", "prepare_data", "train_teacher"]
TRACKED = STAGES[1:]  # check_params computes nothing and logs no MLflow run
OUTS = ("data/prepared", "data/teacher")


def _initdb() -> Path | None:
    """The newest installed PostgreSQL's initdb (Debian keeps each major version apart, off PATH)."""
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    if found:
        return max(found, key=lambda p: int(p.parent.parent.name))
    on_path = shutil.which("initdb")  # elsewhere; resolved, since pg_ctl & co. sit beside the real file
    return Path(on_path).resolve() if on_path else None


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port holding the role and database `mlflow`, made
    as the README makes them; yields the port. Its own cluster rather than the system one: nothing to
    clash with (a server already on 5432, its config) and nothing left behind."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)")
    as_postgres = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="kdlens-pg-"))  # not tmp_path: pytest's temp root is owner-only
    data, log, port = home / "data", home / "server.log", free_port()

    def pg(tool, *args):
        out = subprocess.run([*as_postgres, str(initdb.parent / tool), *map(str, args)], cwd=home,
                             capture_output=True, text=True, timeout=120)
        tail = log.read_text()[-2000:] if log.exists() else ""
        assert out.returncode == 0, f"{tool} failed:\n{out.stdout}\n{out.stderr}\n{tail}"

    try:
        if as_postgres:
            os.chown(home, owner.pw_uid, owner.pw_gid)
        pg("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", data, "-l", log, "-w", "-t", "60",
           "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        try:
            pg("createuser", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "mlflow")
            pg("createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-O", "mlflow", "mlflow")
            yield port
        finally:
            pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _stop(proc):
    """SIGTERM the server's process group (make, mlflow and its uvicorn workers); SIGKILL what outlives 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 30
    try:
        while time.time() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`make server` itself, against that database, its artifact store in a temp dir; yields (URL, store)."""
    home = tmp_path_factory.mktemp("mlflow_server")
    artifacts, log, port = home / "artifacts", home / "server.log", free_port()
    # Not the caller's MLflow settings, nor an outer `make test`'s flags.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MAKE", "MFLAGS"))}
    cmd = ["make", "-s", "-C", str(ROOT), "-o", "install", "server", f"BIN={BIN}", f"SERVER_PORT={port}",
           f"DB_URI=postgresql+psycopg2://mlflow@127.0.0.1:{postgres}/mlflow", f"ARTIFACTS={artifacts}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"make server exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            assert time.time() < deadline, f"no /health answer in 120 s:\n{log.read_text()[-4000:]}"
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        yield url, artifacts
    finally:
        _stop(proc)


def test_stages_log_to_the_postgres_backed_server(repo, server, postgres, tmp_path):
    import psycopg2

    url, artifacts = server
    run_cmd(repo, "dvc", "repro", *STAGES, env={"MLFLOW_TRACKING_URI": url})
    client = mlflow.MlflowClient(url)
    exp = client.get_experiment_by_name("kdlens-scenes")
    assert exp.artifact_location.startswith("mlflow-artifacts:/")  # the server's store, not a client's path
    runs = {r.data.tags["kdlens.stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == TRACKED and all(r.info.status == "FINISHED" for r in runs.values())
    teacher, summary = runs["train_teacher"], json.loads((repo / "metrics/teacher.json").read_text())
    assert summary["mlflow_run_id"] == teacher.info.run_id
    assert teacher.data.metrics["final/test_top1"] == pytest.approx(summary["test_top1"])
    assert json.loads((repo / "metrics/data.json").read_text())["mlflow_run_id"] == runs["prepare_data"].info.run_id
    for artifact in ("teacher.json", "curves/teacher.json"):  # downloaded through the server
        got = client.download_artifacts(teacher.info.run_id, artifact, str(tmp_path))
        assert Path(got).read_bytes() == (repo / "metrics" / artifact).read_bytes(), artifact
    assert len(list(artifacts.rglob("teacher.json"))) == 2  # uploaded through the server into its store
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists()
    db = psycopg2.connect(host="127.0.0.1", port=postgres, user="mlflow", dbname="mlflow")
    try:
        with db.cursor() as cur:
            cur.execute("SELECT run_uuid FROM runs")
            assert sorted(r for (r,) in cur.fetchall()) == sorted(r.info.run_id for r in runs.values())
    finally:
        db.close()


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file of OUTS, by path relative to root."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for d in OUTS for f in sorted((root / d).rglob("*")) if f.is_file()}


def test_a_second_clone_pulls_data_and_teacher_instead_of_retraining(repo, tmp_path):
    run_cmd(repo, "dvc", "repro", *STAGES)  # nothing to do where the server test ran
    run_cmd(repo, "dvc", "remote", "add", "-d", "team", str(tmp_path / "dvc-remote"))
    run_cmd(repo, "dvc", "push")
    run_cmd(repo, "git", "add", "-A")
    run_cmd(repo, "git", "commit", "-qm", "data, teacher and the team remote")
    want = _files(repo)
    assert "data/teacher/model.pt" in want and "data/prepared/card.json" in want

    clone = tmp_path / "clone"
    run_cmd(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    run_cmd(clone, "dvc", "pull", *STAGES)  # the stages dvc.lock records (here, the only ones run)
    assert _files(clone) == want
    assert run_cmd(clone, "dvc", "status", *STAGES).stdout.strip().endswith("up to date.")
    out = run_cmd(clone, "dvc", "repro", *STAGES).stdout
    assert out.count("didn't change") == len(STAGES), out
    assert not (clone / "mlflow.db").exists()  # no stage ran, so none logged an MLflow run
