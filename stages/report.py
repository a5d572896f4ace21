"""Stage ``report``: the table of teacher, baseline and distilled student, with curves (reads files only)."""
import numpy as np

from engine.datasets.store import load_prepared
from engine.device import device
from engine.files import read_json, write_json
from engine.jobs import load_model
from engine.params import load_params, params_hash
from engine.stage import run_stage
from engine.tracking import StageRun, tracking_uri
from explain.plots import concept_curves, sigma_over_epochs, training_curves
from explain.report import ROLES, analysed_layer, knowledge, knowledge_markdown, markdown, summarise

from .paths import CURVES, DATA, METRICS, PARAMS, REPORTS, role_dir

SIGMA_PLOT_IMAGES = 4  # images shown in reports/sigma_<role>.png


def knowledge_inputs(p):
    """Read what the knowledge metrics need: sigma maps, weight distances, masks, the analysed layer."""
    from engine.jobs import WEIGHT_DISTANCE_FILE

    sigma = {}
    for role in ("baseline", "student"):
        with np.load(f"data/sigma/{role}/sigma.npz", allow_pickle=False) as z:
            sigma[role] = {k: z[k] for k in z.files}
    wd = {role: read_json(role_dir(role) / WEIGHT_DISTANCE_FILE) for role in ("baseline", "student")}
    data = load_prepared(DATA)
    ids = sigma["student"]["image_ids"]
    masks = data.test.masks[ids] if data.test.masks is not None else None
    model = load_model(role_dir("student") / "model.pt", device())
    layer = analysed_layer(model, p.sigma.tap, p.sigma.index)
    return sigma, wd, masks, data, layer


def main() -> None:
    p = load_params(PARAMS)
    data = read_json(METRICS / "data.json")
    results = {role: read_json(METRICS / f"{role}.json") for role in ROLES}
    curves = {role: read_json(CURVES / f"{role}.json") for role in ROLES}
    report = summarise(data, results)
    sigma, wd, masks, prepared, layer = knowledge_inputs(p)
    report["knowledge"] = knowledge(sigma, wd, masks, prepared.card, layer, p.sigma, p.knowledge,
                                    {r: results[r]["test_top1"] for r in ("baseline", "student")})
    method = results["student"]["method"]
    with StageRun("report", data["name"], {"method": method}, params_hash(report), method=method) as run:
        REPORTS.mkdir(parents=True, exist_ok=True)
        fig = training_curves({f"{role} ({results[role]['arch']}, {results[role]['method']})": curves[role]
                               for role in ROLES})
        fig.savefig(REPORTS / "curves.png", dpi=110)
        k = report["knowledge"]
        fig_c = concept_curves({f"{role} ({results[role]['method']})": k["models"][role]["series"]
                                for role in ("baseline", "student")})
        fig_c.savefig(REPORTS / "concepts.png", dpi=110)
        shown = slice(0, SIGMA_PLOT_IMAGES)
        figs_s = {}
        for role in ("baseline", "student"):
            fig_s = sigma_over_epochs(prepared.test.images[sigma[role]["image_ids"][shown]],
                                      sigma[role]["entropy"][shown], k["epochs"],
                                      title=f"{role} ({results[role]['method']}): entropy maps over epochs",
                                      max_images=SIGMA_PLOT_IMAGES)
            fig_s.savefig(REPORTS / f"sigma_{role}.png", dpi=110)
            figs_s[role] = fig_s
        (REPORTS / "report.md").write_text(markdown(report, tracking_uri(), run.experiment_id)
                                           + "\n" + knowledge_markdown(k, method))
        report["mlflow_run_id"] = run.run_id
        write_json(METRICS / "report.json", report)
        run.log_metrics({"student_test_top1": report["student_test_top1"],
                         "gain_over_baseline": report["gain_over_baseline"]})
        run.log_figure(fig, "plots/curves.png")
        run.log_figure(fig_c, "plots/concepts.png")
        for role, fig_s in figs_s.items():
            run.log_figure(fig_s, f"plots/sigma_{role}.png")
        for role in ("baseline", "student"):
            km = k["models"][role]
            run.log_metrics({f"knowledge/{role}/{m}": km[m] for m in
                             ("N_fg", "N_bg", "lambda_ratio", "D_mean", "D_std", "D_var", "rho", "rho_bg", "rho_all")})
        run.log_metrics({f"knowledge/{h}_holds": float(v["holds"]) for h, v in k["hypotheses"].items()})
        run.log_artifact(REPORTS / "report.md")
        run.log_artifact(METRICS / "report.json")
        print((REPORTS / "report.md").read_text())


if __name__ == "__main__":
    run_stage(main)
