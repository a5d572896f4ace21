"""Project wiring that a clean clone depends on."""
import os
import subprocess

from tiny_profile import ROOT
from core import tracking


def _pins(path):
    return [ln for ln in (ROOT / path).read_text().splitlines() if ln and not ln.startswith("#")]


def test_requirements_are_pinned_and_gpu_variant_only_swaps_faiss():
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    assert all("==" in ln for ln in cpu), cpu
    assert [ln for ln in cpu if not ln.startswith("faiss")] == [ln for ln in gpu if not ln.startswith("faiss")]
    assert "faiss-cpu==1.15.1" in cpu and "faiss-gpu==1.15.1" in gpu and "faiss-cpu==1.15.1" not in gpu


def test_tracking_store_is_absolute_under_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(ROOT)  # a queued experiment's cwd is elsewhere: the store must not follow it
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking._artifact_location() == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking._artifact_location() is None  # a server keeps artifacts in its own (proxied) store


def test_tracking_failure_is_a_warning_not_an_error(monkeypatch, tmp_path):
    import pytest

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    with pytest.warns(UserWarning, match="MLflow start failed"):
        with tracking.StageRun("s", "scenes", {"a": 1}, "h") as run:
            run.log_metrics({"x": 1.0}, step=1)
    assert run.run_id is None


def test_tracking_data_is_git_ignored():
    for path in ("mlflow.db", "mlruns/x", "mlartifacts/x", ".venv/x"):
        out = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert out.returncode == 0, f"{path} must be git-ignored"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make repro" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert os.access(ROOT / ".ci/run", os.X_OK)
