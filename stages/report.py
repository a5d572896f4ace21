"""Stage ``report``: the table of teacher, baseline and distilled student, with curves (reads files only)."""
import numpy as np

from dataset.store import load_prepared
from core.device import device
from core.files import read_json, write_json
import methods
from models.saved import load_model
from core.schema import params_hash
from stages.params import load_params
from core.stage import run_stage
from core.tracking import StageRun, tracking_uri
from explain.plots import concept_curves, sigma_over_epochs, training_curves
from explain import routing as R
from explain.knowledge import VERDICT_SCORE
from explain.report import (ROLES, ROUTING_LEVELS, analysed_layer, knowledge, knowledge_markdown, markdown, routing,
                            routing_markdown, summarise)

from core.paths import (DATA, FIGURES, PARAMS, REPORT, ROUTING_FILE, STRUCTURE_CURVES_FILE, WEIGHT_DISTANCE_FILE,
                        curves_path, metrics_path, model_path, role_dir, sigma_path)

SIGMA_PLOT_IMAGES = 4  # images shown in reports/sigma_<role>.png


def knowledge_inputs(p):
    """Read what the knowledge metrics need: sigma maps, weight distances, masks (and which of the analysed
    images have one), the analysed layer."""
    sigma = {}
    for role in ("baseline", "student"):
        with np.load(sigma_path(role), allow_pickle=False) as z:
            sigma[role] = {k: z[k] for k in z.files}
    wd = {role: read_json(role_dir(role) / WEIGHT_DISTANCE_FILE) for role in ("baseline", "student")}
    data = load_prepared(DATA)
    ids = sigma["student"]["image_ids"]
    masks = data.test.masks[ids] if data.test.masks is not None else None
    model = load_model(model_path("student"), device(), methods.restore_parts)
    layer = analysed_layer(model, p.sigma.tap, p.sigma.index)
    return sigma, wd, masks, data.test.masked[ids], data, layer


def routing_inputs(results: dict) -> tuple[dict, dict] | None:
    """Both students' routing.json and stage-1 epoch records when they are LTBs (else None)."""
    roles = ("baseline", "student")
    if not all((role_dir(r) / ROUTING_FILE).is_file() for r in roles):
        return None
    return ({r: read_json(role_dir(r) / ROUTING_FILE) for r in roles},
            {f"{r} ({results[r]['method']})": read_json(role_dir(r) / STRUCTURE_CURVES_FILE) for r in roles})


def routing_figures(routings: dict, stage1_curves: dict, results: dict, classes: list[str]) -> dict:
    """The routing section's figures by file name."""
    figs = {"gate_entropy.png": R.plot_entropy_curves(stage1_curves)}
    for role, r in routings.items():
        prefs, tree = ([np.asarray(r[which]["preferences"][lv]) for lv in ROUTING_LEVELS] for which in ("stage1", "tree"))
        method = results[role]["method"]
        figs[f"routing_{role}.png"] = R.plot_routing(prefs, classes, f"{role} ({method}): stage-1 routing")
        figs[f"tree_{role}.png"] = R.plot_tree(tree, classes, f"{role} ({method}): hard tree")
    return figs


def main() -> None:
    p = load_params(PARAMS)
    data = read_json(metrics_path("data"))
    results = {role: read_json(metrics_path(role)) for role in ROLES}
    curves = {role: read_json(curves_path(role)) for role in ROLES}
    report = summarise(data, results)
    sigma, wd, masks, exact, prepared, layer = knowledge_inputs(p)
    report["knowledge"] = knowledge(sigma, wd, masks, prepared.card, layer, p.sigma, p.knowledge,
                                    {r: results[r]["test_top1"] for r in ("baseline", "student")}, exact)
    method = results["student"]["method"]
    routed = routing_inputs(results)
    if routed is not None:
        report["routing"] = routing(routed[0], results)
    with StageRun("report", data["name"], {"method": method}, params_hash(report), method=method) as run:
        FIGURES.mkdir(parents=True, exist_ok=True)
        figures = {}
        fig = training_curves({f"{role} ({results[role]['arch']}, {results[role]['method']})": curves[role]
                               for role in ROLES})
        figures["curves.png"] = fig
        k = report["knowledge"]
        fig_c = concept_curves({f"{role} ({results[role]['method']})": k["models"][role]["series"]
                                for role in ("baseline", "student")})
        figures["concepts.png"] = fig_c
        shown = slice(0, SIGMA_PLOT_IMAGES)
        for role in ("baseline", "student"):
            fig_s = sigma_over_epochs(prepared.test.images_at(sigma[role]["image_ids"][shown]),
                                      sigma[role]["entropy"][shown], k["epochs"],
                                      title=f"{role} ({results[role]['method']}): entropy maps over epochs",
                                      max_images=SIGMA_PLOT_IMAGES)
            figures[f"sigma_{role}.png"] = fig_s
        text = markdown(report, tracking_uri(), run.experiment_id) + "\n" + knowledge_markdown(k, method)
        if routed is not None:
            figures.update(routing_figures(*routed, results, prepared.card["classes"]))
            text += "\n" + routing_markdown(report["routing"])
            run.log_metrics({f"routing/{role}/mean_entropy": m["mean_entropy"]
                             for role, m in report["routing"]["models"].items()})
        for name, f in figures.items():
            f.savefig(FIGURES / name, dpi=110)
            run.log_figure(f, f"plots/{name}")
        REPORT.write_text(text)
        report["mlflow_run_id"] = run.run_id
        write_json(metrics_path("report"), report)
        run.log_metrics({"student_test_top1": report["student_test_top1"],
                         "gain_over_baseline": report["gain_over_baseline"]})
        for role in ("baseline", "student"):
            km = k["models"][role]
            run.log_metrics({f"knowledge/{role}/{m}": km[m] for m in
                             ("N_fg", "N_bg", "lambda_ratio", "D_mean", "D_std", "D_var", "rho", "rho_bg", "rho_all")})
        # +1 holds, -1 does not hold, 0 inconclusive (the interval of a criterion contains zero)
        run.log_metrics({f"knowledge/{h}_verdict": VERDICT_SCORE[v["verdict"]] for h, v in k["hypotheses"].items()})
        run.log_artifact(REPORT)
        run.log_artifact(metrics_path("report"))
        print(REPORT.read_text())


if __name__ == "__main__":
    run_stage(main)
