"""Stage ``report``: the table of teacher, baseline and distilled student, with curves (reads files only)."""
from engine.files import read_json, write_json
from engine.params import load_params, params_hash
from engine.stage import run_stage
from engine.tracking import StageRun, tracking_uri
from explain.plots import training_curves
from explain.report import ROLES, markdown, summarise

from .paths import CURVES, METRICS, PARAMS, REPORTS


def main() -> None:
    load_params(PARAMS)  # validated like every stage, though the report reads only files
    data = read_json(METRICS / "data.json")
    results = {role: read_json(METRICS / f"{role}.json") for role in ROLES}
    curves = {role: read_json(CURVES / f"{role}.json") for role in ROLES}
    report = summarise(data, results)
    method = results["student"]["method"]
    with StageRun("report", data["name"], {"method": method}, params_hash(report), method=method) as run:
        REPORTS.mkdir(parents=True, exist_ok=True)
        fig = training_curves({f"{role} ({results[role]['arch']}, {results[role]['method']})": curves[role]
                               for role in ROLES})
        fig.savefig(REPORTS / "curves.png", dpi=110)
        (REPORTS / "report.md").write_text(markdown(report, tracking_uri(), run.experiment_id))
        report["mlflow_run_id"] = run.run_id
        write_json(METRICS / "report.json", report)
        run.log_metrics({"student_test_top1": report["student_test_top1"],
                         "gain_over_baseline": report["gain_over_baseline"]})
        run.log_figure(fig, "plots/curves.png")
        run.log_artifact(REPORTS / "report.md")
        run.log_artifact(METRICS / "report.json")
        print((REPORTS / "report.md").read_text())


if __name__ == "__main__":
    run_stage(main)
