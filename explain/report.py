"""The pipeline report: what each network reached, side by side, as JSON and Markdown.

The report reads only the stages' output files (never MLflow), so it is complete even when DVC restored
every stage from its run cache; the MLflow run ids recorded in those files link each row to its run.
"""
from __future__ import annotations

import numpy as np

from core.tracking import display_uri

from .knowledge import center_box, compare, downsample_masks, wd_at_epochs
from .weight_distance import WeightDistance

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
    # training/health.py's flags (a metrics file written before they existed has none)
    out["health"] = {role: results[role].get("health", []) for role in ROLES}
    return out


def health_lines(report: dict) -> list[str]:
    """The training-health flags of every network, as the report's first section (none when healthy)."""
    flagged = [(role, f) for role in ROLES for f in report.get("health", {}).get(role, [])]
    if not flagged:
        return []
    return ["**Training health** (why a number may not mean what it seems):", "",
            *[f"- {ROLE_TITLES[role]}: {f['message']}" for role, f in flagged], ""]


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
        *health_lines(report),
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
    lines += ["", "![training curves](figures/curves.png)", "",
              # reports/report.md is git-tracked: never a password or token of the tracking URI in it
              f"MLflow: `{display_uri(tracking_uri)}`" + (f", experiment id {experiment_id}" if experiment_id else "") +
              " — open it with `make ui`.", ""]
    return "\n".join(lines)


# --- knowledge metrics (explain/knowledge.py; Cheng et al., CVPR 2020) -----------------------------

KNOWLEDGE_ROLES = ("baseline", "student")


def analysed_layer(model, tap: str, index: int) -> str:
    """The weight name (as in ``WeightDistance(model).names``) of the conv feeding the sigma tap: the last
    non-shortcut conv of ``stages[index]`` for the stages/preact/pooled taps, the stem's last conv for
    ``stem``, the classifier for ``logits``."""
    names = WeightDistance(model).names
    if tap == "logits":
        prefix = model.head_prefix()
    elif tap == "stem":
        prefix = model.stem_prefix()
    else:
        idx = -1 if tap == "pooled" else index
        prefix = model.stage_prefix(idx)
    hits = [nm for nm in names if nm.startswith(prefix) and "shortcut" not in nm and "downsample" not in nm]
    if not hits:
        raise ValueError(f"no conv/linear weight under {prefix!r}; recorded: {', '.join(names)}")
    return hits[-1]


def knowledge(sigma: dict[str, dict], weight_distance: dict[str, dict], masks, card: dict, layer: str,
              sigma_cfg, knowledge_cfg, accuracy: dict[str, float], exact=None) -> dict:
    """The ``knowledge`` entry of metrics/report.json: per model accuracy next to N_fg, N_bg, lambda, D_mean,
    D_std, rho, the hypotheses for the distilled student vs the baseline, and how the masks were made.

    ``sigma[role]``: the arrays of data/sigma/<role>/sigma.npz; ``masks``: uint8 [N, H, W] test masks of
    the analysed images, or None (then the centre-box prior); ``exact``: bool [N], which of them have a real
    mask (None: all), the others take the centre-box prior (a folder dataset with masks for some images).
    """
    base, stud = sigma["baseline"], sigma["student"]
    if not np.array_equal(base["image_ids"], stud["image_ids"]) or not np.array_equal(base["epochs"], stud["epochs"]):
        raise ValueError("baseline and student sigma maps differ in images or checkpoint epochs; re-run estimate_sigma")
    epochs = [int(e) for e in stud["epochs"]]
    grid = stud["entropy"].shape[-1]
    n = len(stud["image_ids"])
    frac = knowledge_cfg.center_box_frac
    box = center_box(grid, frac)
    box_rule = f"rows/cols floor(G*{frac:.4f})..floor(G*(1-{frac:.4f}))"
    exact = np.zeros(n, bool) if masks is None else np.ones(n, bool) if exact is None else np.asarray(exact, bool)
    if masks is not None:
        fg = np.where(exact[:, None, None], downsample_masks(masks, grid, sigma_cfg.mask_mode), box)
        how = (f"downsampled to {grid}x{grid} (mode `{sigma_cfg.mask_mode}`"
               + (": a cell is foreground if any of its pixels is" if sigma_cfg.mask_mode == "any" else "") + ")")
        origin = card.get("mask_source")  # where a folder dataset's masks came from (dataset/folder.py)
        if origin is None:
            mask_source = f"exact {card['name']} masks {how}"
        else:
            rest = n - exact.sum()
            mask_source = (f"masks from {origin['path']} ({origin['kind']}) for {exact.sum()} of {n} images, {how}"
                           + (f"; centre-box prior for the other {rest} ({box_rule})" if rest else ""))
    else:
        fg = box
        mask_source = f"centre-box prior (no masks in {card['name']}): {box_rule}"
    kp = knowledge_cfg
    runs = {"distilled": {"entropy": stud["entropy"], "wd": wd_at_epochs(weight_distance["student"], layer, epochs)},
            "baseline": {"entropy": base["entropy"], "wd": wd_at_epochs(weight_distance["baseline"], layer, epochs)}}
    res = compare(runs["distilled"], runs["baseline"], fg, epochs, kp)
    keys = ("N_fg", "N_bg", "lambda_ratio", "D_mean", "D_std", "D_var", "rho", "rho_bg", "rho_all", "slope",
            "D_mean_bg", "D_std_bg", "n_images", "peak_epoch", "flat_fg_images")
    models_out = {}
    for role, run in (("baseline", "baseline"), ("student", "distilled")):
        r = res[run]
        models_out[role] = {"test_top1": accuracy[role], **{k: r[k] for k in keys},
                            "series": {"epochs": epochs, **r["series"],
                                       "N_fg_interval": res["bootstrap"]["N_fg_interval"][run]}}
    fg_n = np.broadcast_to(fg, (n, grid, grid)).sum(axis=(1, 2))
    return {
        "models": models_out,
        "hypotheses": res["hypotheses"],
        "bootstrap": {k: v for k, v in res["bootstrap"].items() if k != "N_fg_interval"},
        "selection": res["selection"],
        "layer": {"tap": f"{sigma_cfg.tap}[{sigma_cfg.index}]", "weight": layer},
        "masks": {"source": mask_source, "exact_images": int(exact.sum()), "foreground_cells_mean": float(fg_n.mean()),
                  "grid": grid},
        "epochs": epochs,
        "image_ids": [int(i) for i in stud["image_ids"]],
        "params": knowledge_cfg.model_dump(),
        **({"unfiltered": {r: {k: res["unfiltered"][r][k] for k in keys[:9]} for r in ("distilled", "baseline")}}
           if "unfiltered" in res else {}),
    }


def _f(v, fmt=".3f"):
    import math

    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def knowledge_markdown(k: dict, method: str) -> str:
    """The readable knowledge section of reports/report.md."""
    m = k["models"]
    lines = [
        "## What the students learned (knowledge metrics)",
        "",
        f"Cheng et al., *Explaining Knowledge Distillation by Quantifying the Knowledge* (CVPR 2020). Layer: "
        f"`{k['layer']['tap']}` (weight distance of `{k['layer']['weight']}`); checkpoints at epochs "
        f"{k['epochs']}; {m['student']['n_images']} images compared (same images, same noise for both models). "
        f"Foreground: {k['masks']['source']}, {k['masks']['foreground_cells_mean']:.1f} of "
        f"{k['masks']['grid'] ** 2} cells on average.",
        "",
        "| model | test top-1 | N_fg | N_bg | λ | D_mean | D_std | ρ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for role, title in (("baseline", "baseline student (CE only)"), ("student", f"distilled student (`{method}`)")):
        r = m[role]
        lines.append(f"| {title} | {_f(r['test_top1'], '.2f')} | {_f(r['N_fg'], '.2f')} | {_f(r['N_bg'], '.2f')} | "
                     f"{_f(r['lambda_ratio'])} | {_f(r['D_mean'])} | {_f(r['D_std'])} | {_f(r['rho'])} |")
    boot = k["bootstrap"]
    level = f"{100 * boot['level']:g}%"
    lines += ["", f"Hypotheses, `{method}` against the baseline. Each criterion is the difference distilled − "
              f"baseline with its {level} interval from {boot['resamples']} "
              f"{'paired ' if boot['paired'] else ''}bootstrap resamples of the {m['student']['n_images']} images: "
              "it holds or does not hold when the interval excludes zero, and is inconclusive when it does not.", "",
              "| hypothesis | criterion | baseline | distilled | difference | interval | verdict |",
              "|---|---|---:|---:|---:|---|---|"]
    for key, h in k["hypotheses"].items():
        for c in h["checks"]:
            lines.append(f"| {key} | {c['metric']} {c['expect']} | {_f(c['baseline'])} | {_f(c['distilled'])} | "
                         f"{_f(c['difference'], '+.3f')} | [{_f(c['low'], '+.3f')}, {_f(c['high'], '+.3f')}] | "
                         f"{c['verdict']} |")
    lines.append("")
    for key, h in k["hypotheses"].items():
        lines.append(f"- **{key}** ({h['claim']}): **{h['verdict']}**")
    lines += ["", f"N_fg at each checkpoint (epochs {k['epochs']}), mean over images with its {level} interval:", ""]
    for role, title in (("baseline", "baseline"), ("student", f"`{method}`")):
        r = m[role]
        cells = ", ".join(f"{_f(v, '.1f')} [{_f(lo, '.1f')}, {_f(hi, '.1f')}]"
                          for v, (lo, hi) in zip(r["series"]["N_fg"], r["series"]["N_fg_interval"]))
        lines.append(f"- {title}: {cells}; {r['flat_fg_images']} of {r['n_images']} images with a flat N_fg curve "
                     f"(peak at the first checkpoint by the tie rule, D = 0)")
    lines += [
        "",
        "Definitions (Cheng et al., CVPR 2020, Sec. 3):",
        "",
        "- Cell entropy H_i = ln σ_i + ½ ln(2πe) on the σ grid, with σ the per-cell input noise learned at the "
        "same entropy budget for every map (`estimate_sigma`).",
        "- Background baseline H̄_bg: per checkpoint, the mean over the analysed images of each image's mean "
        "background-cell entropy (one constant per checkpoint and per model run, as the upstream code).",
        "- A cell is a visual concept when H̄_bg − H_i > b (b = "
        f"{k['params']['b']}). N_fg / N_bg: concept cells in the foreground / background, mean over images, "
        "at the final checkpoint.",
        "- λ = E_x[N_fg / (N_fg + N_bg)]; an image with no concept contributes "
        f"{'0 (upstream)' if k['params']['empty'] == 'zero' else 'nothing (excluded)'}.",
        "- D(x) = WD(m̂(x)), m̂(x) = the first checkpoint where N_fg(x) peaks, WD = the analysed layer's "
        "cumulative per-iteration weight path Σ‖W(t+1) − W(t)‖_F / ‖W(0)‖_F. D_mean = E_x[D(x)]; "
        "D_std = population standard deviation of D(x).",
        "- ρ = E_x[|S_final(x)| / |∪_k S_k(x)|], S_k = foreground concept cells at checkpoint k (empty union → "
        f"{'0' if k['params']['empty'] == 'zero' else 'excluded'}).",
        "",
        "Where kdlens differs from the upstream code: D_std is the standard deviation (upstream reports the "
        "variance under the name \"fore max var\"; `D_var` is in metrics/report.json); with `skip_first` the "
        "peak index keeps its offset (upstream's points one checkpoint early); σ histories are copies (upstream "
        "aliased them); the effective-sample filter is "
        f"{'on' if k['params']['effect_filter'] else 'off'} and every image with maps is kept (upstream keeps "
        "the first 50 passing); the grid is 8×8 for 32×32 inputs (upstream 16×16 at 224); the weight "
        "distance covers the whole training of each student. The intervals are over images, for this one seed: "
        "they do not include the spread between training runs.",
        "",
        "![concepts over training](figures/concepts.png)",
        "",
        "![σ maps, baseline](figures/sigma_baseline.png)",
        "",
        "![σ maps, distilled](figures/sigma_student.png)",
        "",
    ]
    return "\n".join(lines)


# --- routing of a learned-structure (LTB) student (explain/routing.py; KDExplainer, Xue et al., IJCAI 2021) ---

ROUTING_LEVELS = ("level1", "level2", "level3")


def routing(routings: dict[str, dict], results: dict[str, dict]) -> dict:
    """The ``routing`` entry of metrics/report.json when both students are LTBs: per role, stage-1 (soft)
    and stage-2 (hard tree) accuracy, stage-1 gate entropy per level at the reference temperature, the
    class groups of its tree; and whether the distilled arm routes with lower entropy than the CE arm."""
    out = {"models": {}}
    for role, r in routings.items():
        ent = r["stage1"]["entropy"]
        out["models"][role] = {
            "method": results[role]["method"], "stage1_top1": results[role]["structure_test_top1"],
            "stage2_top1": results[role]["test_top1"], "tree_from": r["tree_from"],
            "entropy": {lv: ent[lv] for lv in ROUTING_LEVELS},
            "mean_entropy": sum(ent[lv] for lv in ROUTING_LEVELS) / len(ROUTING_LEVELS),
            "groups": r["stage1"]["groups"], "tree_groups": r["tree"]["groups"],
        }
    b, s = out["models"]["baseline"], out["models"]["student"]
    out["lower_entropy_than_ce"] = s["mean_entropy"] < b["mean_entropy"]
    return out


def routing_markdown(r: dict) -> str:
    m = r["models"]
    method = m["student"]["method"]
    lines = ["## How the classes route through the tree (KDExplainer)", "",
             "Xue et al., *KDExplainer* (IJCAI 2021): both students are learn-to-branch trees; stage 1 learns the "
             "soft routing with the arm's loss, stage 2 keeps the hard tree and retrains re-initialised weights. "
             "Gate entropy: stage-1 routing preferences at the reference temperature (t = 1), mean over each "
             "level's nodes (nats; 0 = every node picks one parent).", "",
             "| arm | stage-1 top-1 (soft) | stage-2 top-1 (hard tree) | entropy L1 | L2 | L3 | mean | stage-2 tree |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for role in ("baseline", "student"):
        a = m[role]
        e = a["entropy"]
        lines.append(f"| {a['method']} ({role}) | {a['stage1_top1']:.2f} | {a['stage2_top1']:.2f} | "
                     f"{e['level1']:.3f} | {e['level2']:.3f} | {e['level3']:.3f} | {a['mean_entropy']:.3f} | "
                     f"{a['tree_from']} stage 1 |")
    verdict = "holds" if r["lower_entropy_than_ce"] else "does not hold"
    lines += ["", f"`{method}` routes with lower entropy than CE: **{verdict}** here "
              f"({m['student']['mean_entropy']:.3f} vs {m['baseline']['mean_entropy']:.3f}). The paper's claim is "
              "KD < CE and KD < label smoothing: compare all three arms with `python -m explain.compare`.", "",
              "Classes that share a level-2 expert (stage-1 tree):", ""]
    for role in ("baseline", "student"):
        groups = [g for g in m[role]["groups"]["level2"] if len(g) > 1]
        lines.append(f"- {m[role]['method']}: " + ("; ".join("{" + ", ".join(g) + "}" for g in groups) or "none"))
    lines += ["", "![routing, baseline](figures/routing_baseline.png)", "",
              "![routing, distilled](figures/routing_student.png)", "",
              "![hard trees](figures/tree_baseline.png) ![](figures/tree_student.png)", "",
              "![gate entropy over stage 1](figures/gate_entropy.png)", ""]
    return "\n".join(lines)
