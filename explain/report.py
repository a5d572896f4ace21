"""The pipeline report: what each network reached, side by side, as JSON and Markdown.

The report reads only the stages' output files (never MLflow), so it is complete even when DVC restored
every stage from its run cache; the MLflow run ids recorded in those files link each row to its run.
"""
from __future__ import annotations

ROLES = ("teacher", "baseline", "student")
ROLE_TITLES = {"teacher": "teacher", "baseline": "baseline student (CE only)", "student": "distilled student"}


def summarise(data: dict, results: dict[str, dict]) -> dict:
    """metrics/report.json: one entry per network plus the KD gain over the baseline."""
    out = {"dataset": data["name"], "networks": {}}
    for role in ROLES:
        r = results[role]
        out["networks"][role] = {
            "arch": r["arch"], "method": r["method"], "test_top1": r["test_top1"],
            "best_test_top1": r["best_test_top1"], "params": r["params_student"],
            "method_extra_params": r["params_method_extra"], "images_per_s": r["images_per_s"],
            "mlflow_run_id": r["mlflow_run_id"],
        }
    out["method"] = results["student"]["method"]
    out["student_test_top1"] = results["student"]["test_top1"]
    out["baseline_test_top1"] = results["baseline"]["test_top1"]
    out["teacher_test_top1"] = results["teacher"]["test_top1"]
    out["gain_over_baseline"] = results["student"]["test_top1"] - results["baseline"]["test_top1"]
    out["teacher_minus_baseline"] = results["teacher"]["test_top1"] - results["baseline"]["test_top1"]
    return out


def markdown(report: dict, tracking_uri: str, experiment_id: str | None) -> str:
    n = report["networks"]
    lines = [
        f"# kdlens report: `{report['method']}` on `{report['dataset']}`",
        "",
        f"Distilled student vs baseline: **{report['gain_over_baseline']:+.2f}** points test top-1 "
        f"(teacher {report['teacher_test_top1']:.2f}%, baseline {report['baseline_test_top1']:.2f}%, "
        f"student {report['student_test_top1']:.2f}%). One run: judge a method's gain as mean ± std over "
        "seeds (see `bench/`).",
        "",
        "| network | arch | method | test top-1 (last) | best top-1 | params | method extra params | images/s | MLflow run |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for role in ROLES:
        r = n[role]
        gain = "" if role != "student" else f" ({report['gain_over_baseline']:+.2f})"
        lines.append(
            f"| {ROLE_TITLES[role]} | {r['arch']} | {r['method']} | {r['test_top1']:.2f}{gain} | "
            f"{r['best_test_top1']:.2f} | {r['params']:,} | {r['method_extra_params']:,} | "
            f"{r['images_per_s']:.0f} | `{r['mlflow_run_id'] or 'not tracked'}` |")
    lines += ["", "![training curves](curves.png)", "",
              f"MLflow: `{tracking_uri}`" + (f", experiment id {experiment_id}" if experiment_id else "") +
              " — open it with `make ui`.", ""]
    return "\n".join(lines)
