"""MLflow tracking for a stage: one run per executed stage, with kdlens's standard tags.

* Tracking URI: ``MLFLOW_TRACKING_URI`` when set, else SQLite at an **absolute** path under the project
  root (``$DVC_ROOT``, which DVC sets to the parent repo even inside ``--temp``/``--queue`` runs, whose
  working directory is deleted afterwards).
* One experiment per dataset (``kdlens-<dataset>``), so the students of every method sit side by side in
  the UI. In a local store it is created with an absolute artifact location; on a tracking server
  (``http(s)://``) with none, so the server's own (proxied, ``mlflow-artifacts:/``) store applies and
  every client's artifacts land there rather than on the machine that happened to create it.
* Tracking is a side effect, never an output: if MLflow fails, the stage warns and carries on. A tracking
  server (``http(s)://``) is probed once with a short timeout first, since MLflow's own retries stall an
  unreachable one for minutes. ``KDLENS_STRICT_TRACKING=1`` turns a run that cannot be opened into an error.
* Credentials never leave the process: whatever kdlens prints, writes or warns shows ``display_uri``.
* A killed stage's run is continued, not duplicated: the run id is kept in the stage's resumable work
  directory (core/stage.work_dir), and a re-run with the same key resumes that run.
"""
from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote

from .errors import KdlensError, one_line
from .paths import project_root, work_path
from .schema import flatten
from .schema import params_hash as hash_params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


# RFC 3986, appendix B: scheme, authority (userinfo@host:port), path, query, fragment.
_URI = re.compile(r"^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?$", re.S)
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|sig|credential", re.I)  # query parameter names
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s'\"<>]*@")  # scheme://user:pw@ in free text
STRICT_ENV = "KDLENS_STRICT_TRACKING"
PROBE_TIMEOUT_S = 3.0  # connect and read timeout of the probe of a tracking server


def display_uri(uri: str) -> str:
    """``uri`` as kdlens prints and writes it: without user and password (``user:pw@``, ``token@``) and
    without secret-looking query parameters (``password=``, ``token=``, ``key=``...); scheme, host, port,
    path and the other query parameters as they were. A tracking URI may carry credentials, and what
    kdlens prints ends up in logs and what it writes in git (reports/report.md)."""
    m = _URI.match(uri)
    if m is None:  # cannot happen (every group is optional), but never fail on a URI shown to the user
        return _URL_USERINFO.sub(r"\1", uri)
    scheme, authority, path, query, fragment = m.groups()
    out = f"{scheme}:" if scheme is not None else ""
    if authority is not None:
        out += "//" + authority.rpartition("@")[2]
    out += path
    if query is not None:
        kept = [q for q in query.split("&") if q and not _SECRET_KEY.search(unquote(q.partition("=")[0]))]
        if kept or not query:
            out += "?" + "&".join(kept)
    if fragment is not None:
        out += "#" + fragment
    return out


def _secrets(uri: str) -> set[str]:
    """The secrets in ``uri`` (a password, a token in place of a user, secret query values) and in
    MLflow's credential variables, raw and percent-decoded: what ``scrub`` removes from free text."""
    m = _URI.match(uri)
    found = []
    if m is not None:
        authority, query = m.group(2) or "", m.group(4) or ""
        userinfo = authority.rpartition("@")[0]
        if userinfo:
            user, colon, password = userinfo.partition(":")
            found += [userinfo, password] if colon else [user]  # no password: the "user" is a token
        found += [q.partition("=")[2] for q in query.split("&") if _SECRET_KEY.search(unquote(q.partition("=")[0]))]
    found += [os.environ.get("MLFLOW_TRACKING_PASSWORD", ""), os.environ.get("MLFLOW_TRACKING_TOKEN", "")]
    # Shorter strings would blank out ordinary words; they are no secret worth the name either.
    return {v for s in found for v in (s, unquote(s)) if len(v) >= 3}


def scrub(text: str, uri: str | None = None) -> str:
    """``text`` (an exception message, a warning) without the credentials of ``uri`` (default: the
    tracking URI): MLflow and requests quote the whole URL, user and password included, in their errors."""
    uri = tracking_uri() if uri is None else uri
    text = _URL_USERINFO.sub(r"\1", text.replace(uri, display_uri(uri)))
    for secret in sorted(_secrets(uri), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def strict_tracking() -> bool:
    """``KDLENS_STRICT_TRACKING=1``: a stage whose MLflow run cannot be opened stops instead of running
    untracked (for a team whose record of runs must be complete)."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (``http(s)://``) rather than a local store."""
    return uri.startswith(("http://", "https://"))


def probe_server(uri: str, timeout: float | None = None) -> str | None:
    """None if the tracking server at ``uri`` answers ``GET <uri>/health`` within ``timeout`` seconds (or
    ``uri`` is a local store, with no server to probe), else why not (one line, no secret). Any HTTP answer below 500 counts: the server is there (a 404 of
    a proxy without ``/health``, a 401, are MLflow's to report, and quickly); a 5xx is a proxy whose
    server is down, which MLflow would retry for minutes. Sent as MLflow sends its own requests (the
    same ``requests`` library, proxies, TLS and credential variables), so the probe does not fail where
    MLflow would succeed."""
    if not is_server(uri):
        return None
    import requests

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    m = _URI.match(uri)
    authority = m.group(2) or ""
    userinfo, _, host = authority.rpartition("@")
    url = f"{m.group(1)}://{host}{m.group(3).rstrip('/')}/health"
    auth, headers = None, {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        auth = (unquote(user), unquote(password))
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    verify: bool | str = True
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    try:
        r = requests.get(url, auth=auth, headers=headers, timeout=timeout, verify=verify,
                         cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH") or None)
    except requests.Timeout:
        return f"no answer within {timeout:g} s"
    except Exception as e:  # refused, unknown host, TLS: requests' message names the host, maybe the URL
        return scrub(_root_cause(e), uri)
    if r.status_code >= 500:
        return f"HTTP {r.status_code} from {display_uri(url)}"
    return None


def _root_cause(e: BaseException) -> str:
    """The innermost reason of a requests error, on one line: ``Failed to establish a new connection:
    [Errno 111] Connection refused`` rather than three nested wrappers repeating the host."""
    for _ in range(8):  # requests' ConnectionError -> urllib3's MaxRetryError -> NewConnectionError
        inner = getattr(e, "reason", None)
        if not isinstance(inner, BaseException) and e.args and isinstance(e.args[0], BaseException):
            inner = e.args[0]
        if not isinstance(inner, BaseException) or inner is e:
            break
        e = inner
    text = re.sub(r"^\w+\(host=[^)]*\):\s*", "", " ".join(str(e).split()))
    return text or type(e).__name__


RUN_FILE = "mlflow_run_id"
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def run_file(stage: str, key: str) -> Path:
    """Where a stage's run id is kept while the stage may still be resumed: inside the work directory
    of (stage, key), so it lives exactly as long as the resumable training state (core/stage.work_dir
    removes the directory once the stage succeeds)."""
    return work_path(stage, key) / RUN_FILE


def experiment_name(dataset: str) -> str:
    return f"kdlens-{dataset}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    except OSError:
        pass
    return os.environ.get("DVC_EXP_BASELINE_REV", "")


def _artifact_location() -> str | None:
    if is_server(tracking_uri()):
        return None
    return (project_root() / "mlartifacts").as_uri()


class StageRun:
    """``with StageRun(...) as run:`` opens the MLflow run; ``run.run_id`` is None if tracking failed (or
    on a torchrun rank other than 0)."""

    def __init__(self, stage: str, dataset: str, params: dict[str, Any], params_hash: str,
                 method: str = "", tags: dict[str, str] | None = None):
        self.stage, self.dataset, self.params, self.method = stage, dataset, params, method
        self.tags = {
            "kdlens.stage": stage,
            "kdlens.method": method,
            "kdlens.dataset": dataset,
            "dvc.stage": os.environ.get("DVC_STAGE", stage),
            "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "git.commit": git_commit(),
            "params_hash": params_hash,
            **(tags or {}),
        }
        self.key = params_hash
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = 0  # how many times this run was resumed after a killed or failed attempt
        self._mlflow = None
        self._record: IO | None = None  # the locked run-id file (run_file) while this run may be resumed

    @classmethod
    def keyed(cls, stage: str, dataset: str, params: dict[str, Any], inputs: dict[str, str],
              logged: dict[str, Any] | None = None, method: str = "") -> "StageRun":
        """The run of a stage whose work is fixed by ``params`` (a slice of params.yaml) and ``inputs``
        (SHA-256 of its input files): keyed by the hash of both (``run.key``, which also names the
        stage's resumable work directory), logging the params, each input's short hash and ``logged``."""
        return cls(stage, dataset, {**flatten(params), **{f"input.{k}": v[:12] for k, v in inputs.items()},
                                    **(logged or {})}, hash_params({**params, **inputs}), method=method)

    def _warn(self, what: str, e: Exception) -> None:
        warnings.warn(f"MLflow {what} failed ({scrub(one_line(e))}); the stage goes on without it", stacklevel=3)

    def __enter__(self) -> "StageRun":
        if os.environ.get("RANK", "0") != "0":  # a torchrun worker other than rank 0 (core/distributed.py)
            return self  # logs nothing: one run per stage
        uri = tracking_uri()
        # Before any MLflow call: MLflow retries an unreachable server for about 4 minutes per call.
        try:
            why = probe_server(uri)
        except Exception:  # the check itself broke: let MLflow try, as without it
            why = None
        if why is not None:
            if strict_tracking():
                raise KdlensError(f"MLflow tracking server {display_uri(uri)} is unreachable ({why}); "
                                  f"{STRICT_ENV} is set, so the stage stops (unset it to run untracked)")
            warnings.warn(f"MLflow tracking server {display_uri(uri)} is unreachable ({why}); "
                          "the stage runs untracked", stacklevel=2)
            return self
        try:
            import mlflow

            mlflow.set_tracking_uri(uri)
            name = experiment_name(self.dataset)
            exp = mlflow.get_experiment_by_name(name)
            if exp is None:
                try:
                    mlflow.create_experiment(name, artifact_location=_artifact_location())
                except Exception:  # a parallel stage created it first
                    pass
                exp = mlflow.get_experiment_by_name(name)
            run_name = os.environ.get("DVC_STAGE", self.stage)
            if self.method and self.method not in run_name:
                run_name = f"{run_name}:{self.method}"
            _, logged = self._open(mlflow, exp.experiment_id, run_name)
            self.experiment_id = exp.experiment_id
            self._log_params(mlflow, logged)
            self._mlflow = mlflow
            note = f" (resumed, {self.resumed}x)" if self.resumed else ""
            print(f"[mlflow] run {self.run_id}{note} in experiment {name!r} at {display_uri(uri)}", file=sys.stderr)
        except Exception as e:
            if self.run_id is not None:  # opened, then failed: end it, or it would stay RUNNING for ever
                try:
                    mlflow.end_run(status="FAILED")
                except Exception:
                    pass
            self.run_id = self.experiment_id = None
            self._release(keep=True)
            if strict_tracking():
                raise KdlensError(f"MLflow start failed at {display_uri(uri)} ({scrub(one_line(e), uri)}); "
                                  f"{STRICT_ENV} is set, so the stage stops (unset it to run untracked)") from None
            self._warn("start", e)
        return self

    def _open(self, mlflow, experiment_id: str, run_name: str):
        """Start this stage's run, or resume the one a killed (or failed) attempt with the same key left
        unfinished: the re-run resumes training from the same work directory, so its epochs belong to
        the same run. Returns the run and the params it already holds."""
        previous = self._claim_record()
        tags = dict(self.tags)
        if previous is not None:
            client = mlflow.MlflowClient()
            try:
                old = client.get_run(previous)
            except Exception:  # not in this store (deleted for good, or another MLFLOW_TRACKING_URI)
                old = None
            if old is None or old.info.status != "FINISHED":  # a FINISHED run is never reopened
                if old is not None and self._resumable(old, experiment_id):
                    n = int(old.data.tags.get("kdlens.resumed", "0") or 0) + 1
                    try:
                        run = mlflow.start_run(run_id=previous, tags={**tags, "kdlens.resumed": str(n)})
                    except Exception:
                        pass
                    else:
                        self.run_id, self.resumed = previous, n
                        return run, dict(old.data.params)
                tags["kdlens.resumed_from"] = previous
                if old is not None and old.info.status == "RUNNING":  # its process is gone (see _claim_record)
                    try:
                        client.set_terminated(previous, "KILLED")
                    except Exception:
                        pass
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        if self._record is not None:
            self._record.seek(0)
            self._record.truncate()
            self._record.write(run.info.run_id)
            self._record.flush()
        return run, {}

    def _resumable(self, old, experiment_id: str) -> bool:
        """Whether ``old`` is this stage's run: same experiment, stage and key, not deleted."""
        return (old.info.lifecycle_stage == "active" and old.info.experiment_id == experiment_id
                and old.data.tags.get("kdlens.stage") == self.stage
                and old.data.tags.get("params_hash") == self.key)

    def _claim_record(self) -> str | None:
        """Lock this (stage, key)'s run-id file and return the run id it holds, if any. The lock is held
        for the whole run, so a run whose file is unlocked has lost its process (killed): the kernel
        drops the lock of a dead process. If another live process holds it (two queued experiments with
        identical inputs, as in core/stage.work_dir), this run neither resumes nor records itself."""
        try:
            path = run_file(self.stage, self.key)
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")
        except OSError:  # an unwritable project: the run is simply not resumable
            return None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        f.seek(0)
        previous = f.read().strip()
        self._record = f
        return previous if _RUN_ID.fullmatch(previous) else None

    def _release(self, keep: bool) -> None:
        """Unlock the run-id file; unless ``keep`` (the stage failed and may be re-run), remove it, and its
        directory if nothing else is in it (a stage that uses no work directory)."""
        f, self._record = self._record, None
        if f is None:
            return
        path = Path(f.name)
        if not keep or f.tell() == 0:  # nothing recorded (the run never opened): nothing to resume
            path.unlink(missing_ok=True)
            try:
                path.parent.rmdir()
            except OSError:  # work_dir's own files, or already removed with the work directory
                pass
        f.close()

    def _log_params(self, mlflow, logged: dict[str, str]) -> None:
        """Log the params; a resumed run keeps the values it has (MLflow refuses to change a param), and
        a value that changed since (``device``, ``trainer.nproc`` are not part of the key) becomes the
        tag ``kdlens.resumed.<param>``."""
        params = {k: ("" if v is None else v) for k, v in self.params.items()}
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})
        changed = {f"kdlens.resumed.{k}": str(v) for k, v in params.items() if k in logged and logged[k] != str(v)}
        if changed:
            mlflow.set_tags(changed)

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        if self._mlflow is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self._warn(what, e)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k.replace("@", "_"): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self._call("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_figure(self, fig, artifact_file: str) -> None:
        self._call("log_figure", lambda: self._mlflow.log_figure(fig, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._call("set_tags", lambda: self._mlflow.set_tags(tags))

    def __exit__(self, exc_type, exc, tb) -> None:
        self._call("end_run", lambda: self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED"))
        self._release(keep=exc_type is not None)
