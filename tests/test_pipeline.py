"""The whole pipeline, for real: `dvc repro` on a tiny profile in a temporary git repo (a copy of the
project tests/conftest.py reproduces once for the run).

Checks the outputs, the MLflow runs (one per executed stage, with tags, run ids echoed in the metrics
JSON), that a second `dvc repro` does nothing, that bad params stop a stage before any work with one
line, that a killed stage resumes, that params and code edits re-run exactly the stages that read them,
and a queued sweep of two methods, each re-running only `distill`, `estimate_sigma@student` and `report`,
in DVC and in the MLflow UI.
"""
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from explain import knowledge as K
from pipeline_project import BIN, STAGES, free_port, mlflow_runs, project_env, run_cmd
from tiny_profile import ROOT

pytestmark = pytest.mark.cost(220)


@pytest.fixture(scope="module")
def repo(reproduced_repo):
    return reproduced_repo


def test_repro_runs_every_stage_and_tracks_it(repo):
    for f in ["data/prepared/card.json", "data/teacher/model.pt", "data/baseline/model.pt",
              "data/student/model.pt", "data/student/checkpoints/epoch_000.pt",
              "data/student/checkpoints/epoch_002.pt", "reports/report.md", "reports/figures/curves.png"]:
        assert (repo / f).is_file(), f
    report = json.loads((repo / "metrics/report.json").read_text())
    assert report["method"] == "kd" and report["dataset"] == "scenes"
    assert report["gain_over_baseline"] == pytest.approx(report["student_test_top1"] - report["baseline_test_top1"])

    client, runs = mlflow_runs(repo)
    by_stage = {r.data.tags["kdlens.stage"]: r for r in runs}
    assert sorted(by_stage) == sorted(STAGES) and len(runs) == len(STAGES)
    distill = by_stage["distill"]
    assert distill.data.tags["kdlens.method"] == "kd"
    assert len(distill.data.tags["git.commit"]) == 40 and distill.data.tags["params_hash"]
    assert distill.data.params["methods.kd.T"] == "4.0"
    assert distill.data.params["trainer.compile_teacher"] == "False"  # the tiny profile's (conftest)
    assert distill.info.status == "FINISHED"
    history = client.get_metric_history(distill.info.run_id, "test/top1")
    assert [m.step for m in history] == [1, 2]
    for key in ("train/kd", "train/ce", "gradnorm/kd", "gradnorm/ce", "lr", "images_per_s"):
        assert key in distill.data.metrics, key
    for role, stage in [("teacher", "train_teacher"), ("baseline", "train_baseline"), ("student", "distill")]:
        summary = json.loads((repo / f"metrics/{role}.json").read_text())
        assert summary["mlflow_run_id"] == by_stage[stage].info.run_id
        assert report["networks"][role]["mlflow_run_id"] == summary["mlflow_run_id"]
    assert "plots/training_curves.png" in [a.path for a in client.list_artifacts(distill.info.run_id, "plots")]
    md = (repo / "reports/report.md").read_text()
    assert distill.info.run_id in md and "distilled student" in md
    # sigma maps of both students at both kept checkpoints, knowledge metrics in the report
    import numpy as np

    for role in ("baseline", "student"):
        with np.load(repo / f"data/sigma/{role}/sigma.npz") as z:
            assert z["entropy"].shape == z["sigma"].shape == (4, 2, 8, 8)
            assert z["epochs"].tolist() == [0, 2] and len(z["image_ids"]) == 4
        sig = json.loads((repo / f"metrics/sigma_{role}.json").read_text())
        assert sig["mlflow_run_id"] == by_stage[f"estimate_sigma@{role}"].info.run_id
        assert any(a.path.startswith("plots/sigma_") for a in
                   client.list_artifacts(by_stage[f"estimate_sigma@{role}"].info.run_id, "plots"))
    k = report["knowledge"]
    for role in ("baseline", "student"):
        for key in ("test_top1", "N_fg", "N_bg", "lambda_ratio", "D_mean", "D_std", "rho"):
            assert key in k["models"][role], (role, key)
    assert sorted(k["hypotheses"]) == ["H1", "H2", "H3"]
    assert all(h["verdict"] in K.VERDICT_SCORE for h in k["hypotheses"].values())
    assert k["bootstrap"]["paired"] and k["bootstrap"]["resamples"] == 1000
    for role in ("baseline", "student"):  # N_fg at each checkpoint with its interval
        assert len(k["models"][role]["series"]["N_fg_interval"]) == 2
    assert "| H1 | N_fg higher |" in md and "N_fg at each checkpoint" in md
    assert "knowledge/H1_verdict" in by_stage["report"].data.metrics
    assert k["layer"]["weight"].endswith(".weight") and "exact scenes masks" in k["masks"]["source"]
    assert "## What the students learned" in md and k["layer"]["weight"] in md
    for f in ("concepts.png", "sigma_baseline.png", "sigma_student.png"):
        assert (repo / "reports/figures" / f).is_file(), f


def test_second_repro_does_nothing(repo):
    out = run_cmd(repo, "dvc", "repro")
    assert "didn't change" in out.stdout or "up to date" in out.stdout.lower(), out.stdout
    assert len(mlflow_runs(repo)[1]) == len(STAGES)
    assert run_cmd(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


def test_bad_params_stop_the_stage_with_one_line_and_keep_outputs(repo):
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["method"] = "nope"
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    model = (repo / "data/student/model.pt").read_bytes()
    out = run_cmd(repo, sys.executable, "-m", "stages.distill", check=False)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: params.yaml: method: unknown method 'nope'")
    assert (repo / "data/student/model.pt").read_bytes() == model
    run_cmd(repo, "git", "checkout", "params.yaml")
    # a method that cannot serve the pair is refused by the first stage, before the teacher trains
    p.update(method="kdsvd", teacher={**p["teacher"], "arch": "resnet8x4"})
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    out = run_cmd(repo, sys.executable, "-m", "stages.check_params", check=False)
    assert out.returncode == 2 and "error: method 'kdsvd' with student CifarResNet: kdsvd " in out.stderr
    assert "Traceback" not in out.stderr
    run_cmd(repo, "git", "checkout", "params.yaml")
    # through DVC, kdlens's line comes before DVC looks for methods/nope.py
    out = run_cmd(repo, "dvc", "exp", "run", "-S", "method=nope", check=False)
    assert out.returncode != 0 and "error: params.yaml: method: unknown method 'nope'; choose one of: " in out.stderr
    assert "No such file" not in out.stderr + out.stdout
    run_cmd(repo, "git", "checkout", "params.yaml")


def test_killed_stage_resumes_where_it_stopped(repo):
    """SIGKILL a training stage after its first epoch; `dvc repro` of it resumes instead of restarting."""
    import signal
    import time

    p = yaml.safe_load((repo / "params.yaml").read_text())
    # Long enough to be killed mid-run (the kill comes within 50 ms of epoch 1's last.pt), short enough that
    # the resumed run's remaining epochs cost seconds.
    p["student"]["train"]["epochs"] = 8
    p["student"]["train"]["keep_epochs"] = [0, 8]
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_baseline"], cwd=repo, env=project_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((repo / ".dvc/tmp/kdlens").glob("train_baseline-*/last.pt")):
            assert proc.poll() is None, "the stage ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    out = run_cmd(repo, "dvc", "repro", "train_baseline")
    summary = json.loads((repo / "metrics/baseline.json").read_text())
    assert summary["resumed_from_epoch"] >= 1, out.stderr[-2000:]
    assert "resuming from" in out.stdout + out.stderr
    assert summary["kept_epochs"] == [0, 8]  # the epoch-0 copy made before the kill survived
    assert not list((repo / ".dvc/tmp/kdlens").glob("train_baseline-*")), "work dir removed after success"
    _restore_committed_state(repo)


def _restore_committed_state(repo):
    # HEAD, not the index: DVC's autostage has staged the dvc.lock of whatever ran last. And an index
    # rebuilt from scratch: after a failed workspace `dvc exp run` (DVC 3.67), the index's stat data
    # can match a file the experiment rewrote, and `git reset --hard` then leaves that file as it is.
    (repo / ".git" / "index").unlink(missing_ok=True)
    run_cmd(repo, "git", "reset", "-q", "--hard")
    run_cmd(repo, "dvc", "checkout", "--force")
    assert run_cmd(repo, "dvc", "status").stdout.strip().endswith("Data and pipelines are up to date.")


def _start_ui(repo):
    """`make ui`'s server command, run against the test repo's store; returns (process, base URL)."""
    import re
    import time
    import urllib.request

    recipe = (ROOT / "Makefile").read_text().split("\nui:", 1)[1].split("\n\n", 1)[0]
    cmd = " ".join(ln.strip().rstrip("\\") for ln in recipe.splitlines()[1:])
    port = free_port()
    cmd = cmd.replace("$(BIN)/", f"{BIN}/").replace("$(UI_PORT)", str(port)).replace("$(CURDIR)", str(repo))
    assert "--host 127.0.0.1" in cmd and not re.search(r"\$\(", cmd), cmd
    server = subprocess.Popen(cmd.split(), cwd=repo, env=project_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{base}/health", timeout=2).read() == b"OK":
                return server, base
        except OSError:
            time.sleep(0.5)
    server.terminate()
    raise AssertionError("MLflow UI did not answer /health within 60 s")


@pytest.fixture(scope="module")
def ui(repo):
    """One `make ui` server for the module's UI tests (it reads the store live, so later runs show too)."""
    server, base = _start_ui(repo)
    yield base
    server.terminate()
    server.wait(timeout=30)


def test_make_ui_serves_the_project_store(repo, ui):
    import urllib.request

    body = json.dumps({"experiment_ids": [mlflow_runs(repo)[0].get_experiment_by_name("kdlens-scenes").experiment_id]})
    req = urllib.request.Request(f"{ui}/api/2.0/mlflow/runs/search", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    runs = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
    stages = {t["value"] for r in runs for t in r["data"]["tags"] if t["key"] == "kdlens.stage"}
    assert {"train_teacher", "distill", "report"} <= stages


SWEEP = ("ce", "dkd")  # methods no earlier test ran, so every experiment executes and logs
PER_EXPERIMENT = ["distill", "estimate_sigma@student", "report"]  # what a change of method re-runs


def test_params_typos_stop_the_run_and_unread_edits_rerun_only_the_check(repo):
    """check_params reads the whole params.yaml: an edit no other stage reads (an unselected method's
    section) re-runs the check alone; a misspelt key anywhere stops `dvc repro` in one line."""
    _restore_committed_state(repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["method"] == "kd"
    p["methods"]["dkd"]["beta"] = 2.0
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    assert set(json.loads(run_cmd(repo, "dvc", "status", "--json").stdout)) == {"check_params"}
    assert re.findall(r"Running stage '([^']+)'", run_cmd(repo, "dvc", "repro").stdout) == ["check_params"]
    model = (repo / "data/student/model.pt").read_bytes()
    for key, section in (("sed", p), ("betta", p["methods"]["dkd"])):  # top level; an unselected method
        section[key] = 5
        (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        out = run_cmd(repo, "dvc", "repro", check=False)
        name = key if section is p else f"methods.dkd.{key}"
        assert out.returncode != 0 and f"error: params.yaml: {name}: unknown key" in out.stderr, out.stderr
        assert re.findall(r"Running stage '([^']+)'", out.stdout) == ["check_params"]
        del section[key]
    assert (repo / "data/student/model.pt").read_bytes() == model
    _restore_committed_state(repo)


def test_code_edits_rerun_exactly_the_stages_that_run_that_code(repo):
    """Each stage depends on the code it imports (tests/test_architecture.py): editing an unselected
    method re-runs nothing, and editing the sigma estimator re-runs no training."""
    _restore_committed_state(repo)
    for path, expected in (("methods/rkd.py", {"check_params"}),  # it validates every method's section
                           ("explain/sigma.py", {"estimate_sigma@baseline", "estimate_sigma@student"})):
        with open(repo / path, "a") as f:
            f.write("\n# an edit\n")
        changed = json.loads(run_cmd(repo, "dvc", "status", "--json").stdout)
        assert set(changed) == expected, (path, changed)
        run_cmd(repo, "git", "checkout", path)


def test_teacher_compile_switch_reruns_only_the_stages_that_run_the_teacher(repo):
    """``trainer.compile_teacher`` is how the frozen teacher runs: neither the teacher's nor the baseline's
    training declares it, so switching it retrains neither. (That the compiled teacher's cache and live
    logits equal the eager one's: tests/test_teacher_cache.py.)"""
    _restore_committed_state(repo)
    p = yaml.safe_load((repo / "params.yaml").read_text())
    assert p["trainer"]["compile_teacher"] is False  # the tiny profile's; the project's default is true
    p["trainer"]["compile_teacher"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    changed = json.loads(run_cmd(repo, "dvc", "status", "--json").stdout)
    assert set(changed) == {"check_params", "cache_teacher", "distill"}, changed  # (any edit re-runs the check)
    run_cmd(repo, "git", "checkout", "params.yaml")


def _exp_rows(shown):
    """(params, metrics) of every revision in `dvc exp show --json` output, whatever its nesting."""
    rows = []
    if isinstance(shown, dict):
        data = shown.get("data")
        if isinstance(data, dict) and "params" in data:
            params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
            metrics = {k: (v or {}).get("data", {}) for k, v in (data.get("metrics") or {}).items()}
            rows.append((shown.get("name"), params, metrics))
        for v in shown.values():
            rows += _exp_rows(v)
    elif isinstance(shown, list):
        for v in shown:
            rows += _exp_rows(v)
    return rows


def test_queued_sweep_compares_methods_in_dvc_and_mlflow(repo):
    """Two experiments on two queue workers at once, both logging into the one tracking store: no run lost."""
    import time

    before = {r.info.run_id for r in mlflow_runs(repo)[1]}
    run_cmd(repo, "dvc", "exp", "run", "--queue", "-S", f"method={','.join(SWEEP)}")
    run_cmd(repo, "dvc", "queue", "start", "-j", "2")
    # Wait on the tracking store (a cheap query) for both experiments' last stage, and ask DVC (a ~2 s
    # process) only every 30 s, to see a failed task early, and once at the end.
    deadline, next_check = time.time() + 600, time.time() + 30
    while time.time() < deadline:
        new = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
        if sum(r.data.tags["kdlens.stage"] == "report" for r in new) == len(SWEEP):
            break
        if time.time() > next_check:
            if "Failed" in run_cmd(repo, "dvc", "queue", "status").stdout:
                break
            next_check = time.time() + 30
        time.sleep(2)
    status = run_cmd(repo, "dvc", "queue", "status").stdout
    while any(s in status for s in ("Queued", "Running")) and time.time() < deadline:
        time.sleep(1)  # a worker records its experiment just after the last stage's run is logged
        status = run_cmd(repo, "dvc", "queue", "status").stdout
    assert "Failed" not in status, status
    rows = _exp_rows(json.loads(run_cmd(repo, "dvc", "exp", "show", "--json").stdout))
    top1 = {p.get("method"): m.get("metrics/student.json", {}).get("test_top1") for _, p, m in rows}
    for method in SWEEP:
        assert isinstance(top1.get(method), float), (method, top1)
    new = [r for r in mlflow_runs(repo)[1] if r.info.run_id not in before]
    stages = {}
    for r in new:
        stages.setdefault(r.data.tags["dvc.exp_name"], []).append(r.data.tags["kdlens.stage"])
    names = {p.get("method"): name for name, p, _ in rows}
    assert sorted(stages) == sorted(names[m] for m in SWEEP), (stages, names)  # the experiments exp show lists
    assert all(sorted(s) == PER_EXPERIMENT for s in stages.values()), stages  # each stage's run, once
    distills = {r.data.tags["kdlens.method"]: r for r in new if r.data.tags["kdlens.stage"] == "distill"}
    assert sorted(distills) == sorted(SWEEP)
    for method, run in distills.items():
        assert run.data.tags["dvc.exp_name"], "queued runs are tagged with their DVC experiment"
        assert run.data.metrics["final/test_top1"] == pytest.approx(top1[method])
    assert len({r.info.experiment_id for r in new}) == 1  # side by side in one MLflow experiment


def test_mlflow_ui_shows_the_methods_side_by_side(repo, ui):
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    client, runs = mlflow_runs(repo)
    distills = {r.data.tags["kdlens.method"]: r for r in runs if r.data.tags["kdlens.stage"] == "distill"}
    exp_id = runs[0].info.experiment_id
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{ui}/#/experiments/{exp_id}/runs", wait_until="domcontentloaded")
        for method in SWEEP:
            expect(page.get_by_text(distills[method].info.run_name).first).to_be_visible(timeout=30000)
        for method in SWEEP:
            run = distills[method]
            page.goto(f"{ui}/#/experiments/{exp_id}/runs/{run.info.run_id}", wait_until="domcontentloaded")
            row = page.get_by_role("row").filter(has_text="final/test_top1").first
            expect(row).to_be_visible(timeout=30000)
            expect(row).to_contain_text(repr(run.data.metrics["final/test_top1"])[:5])  # its test accuracy
        browser.close()
