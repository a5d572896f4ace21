"""Knowledge metrics (Cheng et al., CVPR 2020) on hand-built entropy maps and masks with hand-computed answers."""
import json
import math

import numpy as np
import pytest

from explain import knowledge as K

# --- a hand-built example: 2 images, 3 checkpoints, 4x4 grid, foreground = the top-left 2x2 cells ----
#
# image A  k0: every cell -2.0
#          k1: fg (0,0) = -2.5, the rest -2.0                       bg mean -2.0
#          k2: fg (0,0), (0,1) = -2.5; bg (3,3) = -2.6, rest -2.0   bg mean (11*-2.0 - 2.6)/12 = -2.05
# image B  k0: every cell -1.8
#          k1: fg all four -2.4; bg (2,2) = -2.6, rest -1.8         bg mean (11*-1.8 - 2.6)/12 = -22.4/12
#          k2: fg (1,1) = -2.4, the rest -1.8                       bg mean -1.8
# dataset baseline Hbg = [-1.9, (-2.0 - 22.4/12)/2, -1.925]; b = 0.2, so a cell is a concept below
# k0: -2.1 (none), k1: -2.1333 (A: (0,0); B: 4 fg + (2,2)), k2: -2.125 (A: 2 fg + (3,3); B: (1,1)).
EPOCHS = [0, 5, 10]
WD = [0.0, 1.0, 4.0]
FG = np.zeros((4, 4), dtype=bool)
FG[:2, :2] = True


def example() -> np.ndarray:
    h = np.zeros((2, 3, 4, 4))
    h[0, :] = -2.0
    h[0, 1, 0, 0] = -2.5
    h[0, 2, 0, 0] = h[0, 2, 0, 1] = -2.5
    h[0, 2, 3, 3] = -2.6
    h[1, :] = -1.8
    h[1, 1, :2, :2] = -2.4
    h[1, 1, 2, 2] = -2.6
    h[1, 2, 1, 1] = -2.4
    return h


def test_center_box_matches_the_ilsvrc_protocol():
    assert K.center_box(16).sum() == 144  # cells 2..13
    assert np.array_equal(np.flatnonzero(K.center_box(16)[8]), np.arange(2, 14))
    box8 = K.center_box(8)
    assert box8.sum() == 36 and np.array_equal(np.flatnonzero(box8[3]), np.arange(1, 7))
    assert not box8[0].any() and not box8[:, 7].any()
    assert K.center_box(8, frac=0.25).sum() == 5 * 5  # rows 2..6


def test_mask_downsampling_modes():
    m = np.zeros((32, 32), dtype=np.uint8)
    m[4:8, 0:4] = 1  # exactly grid cell (1, 0)
    m[9, 9] = 1  # one pixel of cell (2, 2), not its centre (10, 10) nor its corner (8, 8)
    m[18, 26] = 7  # the centre pixel of cell (4, 6): any nonzero value is foreground
    center = K.downsample_masks(m, 8)
    assert center.dtype == bool and center.shape == (8, 8)
    assert set(zip(*np.nonzero(center))) == {(1, 0), (4, 6)}
    assert set(zip(*np.nonzero(K.downsample_masks(m, 8, "nearest")))) == {(1, 0)}
    assert set(zip(*np.nonzero(K.downsample_masks(m, 8, "any")))) == {(1, 0), (2, 2), (4, 6)}
    batch = K.downsample_masks(np.stack([m, (m == 0).astype(np.uint8)]), 8)
    assert batch.shape == (2, 8, 8) and batch[1].sum() == 64 - 2


def test_background_baseline_dataset_and_per_image():
    h = example()
    hbg = K.background_baseline(h, FG)
    np.testing.assert_allclose(hbg, [-1.9, (-2.0 - 22.4 / 12) / 2, -1.925])
    per = K.background_baseline(h, FG, mode="per_image")
    np.testing.assert_allclose(per, [[-2.0, -2.0, -2.05], [-1.8, -22.4 / 12, -1.8]])
    # an image without background cells does not enter the dataset mean
    full = np.ones((3, 4, 4), dtype=bool)
    full[:2] = FG
    h3 = np.concatenate([h, np.full((1, 3, 4, 4), -9.0)])
    np.testing.assert_allclose(K.background_baseline(h3, full), hbg)


def test_concepts_counts_ratio():
    h = example()
    c = K.concept_cells(h, K.background_baseline(h, FG), b=0.2)
    n_fg, n_bg = K.concept_counts(c, FG)
    assert n_fg.tolist() == [[0, 1, 2], [0, 4, 1]]
    assert n_bg.tolist() == [[0, 0, 1], [0, 1, 0]]
    assert c[0, 2, 3, 3] and c[1, 1, 2, 2] and not c[0, 0].any()
    lam = K.discriminative_ratio(n_fg, n_bg, "zero")
    np.testing.assert_allclose(lam, [0.0, (1 + 4 / 5) / 2, (2 / 3 + 1) / 2])
    lam_ex = K.discriminative_ratio(n_fg, n_bg, "exclude")
    assert math.isnan(lam_ex[0])
    np.testing.assert_allclose(lam_ex[1:], lam[1:])
    # the empty-image policy: one image without concepts
    assert K.discriminative_ratio([3, 0], [1, 0], "zero") == pytest.approx(0.375)
    assert K.discriminative_ratio([3, 0], [1, 0], "exclude") == pytest.approx(0.75)
    # a larger threshold removes concepts: at b = 0.5 the cells at -2.4 (B's fg) are no longer below
    # the thresholds -2.4333 (k1) and -2.425 (k2); -2.5 and -2.6 still are
    c2 = K.concept_cells(h, K.background_baseline(h, FG), b=0.5)
    assert K.concept_counts(c2, FG)[0].tolist() == [[0, 1, 2], [0, 0, 0]]
    assert K.concept_counts(c2, FG)[1].tolist() == [[0, 0, 1], [0, 1, 0]]


def test_peak_and_learning_dynamics():
    n_fg = np.array([[0, 1, 2], [0, 4, 1]])
    d = K.learning_dynamics(n_fg, WD, EPOCHS)
    assert d["peak_index"] == [2, 1] and d["peak_epoch"] == [10, 5] and d["D"] == [4.0, 1.0]
    assert d["D_mean"] == pytest.approx(2.5)
    assert d["D_var"] == pytest.approx(2.25)  # population variance (ddof 0), upstream's np.var
    assert d["D_std"] == pytest.approx(1.5)  # kdlens' official dispersion
    assert d["slope"] == pytest.approx((2 / 4 + 4 / 1) / 2) and d["slope_excluded"] == 0
    # ties: the FIRST maximum; a peak at checkpoint 0 has WD = 0 and is left out of the slope
    tie = K.learning_dynamics(np.array([[3, 1, 3], [1, 2, 2]]), WD)
    assert tie["peak_index"] == [0, 1] and tie["slope_excluded"] == 1
    assert tie["slope"] == pytest.approx(2 / 1.0)
    # skip_first excludes checkpoint 0 but maps the index back correctly (no upstream off-by-one)
    assert K.peak_index(np.array([[3, 1, 3], [5, 2, 1]]), skip_first=True).tolist() == [2, 1]
    assert K.learning_dynamics(np.array([[3, 1, 3]]), WD, skip_first=True)["D"] == [4.0]


def test_stability_fg_bg_all():
    h = example()
    c = K.concept_cells(h, K.background_baseline(h, FG), b=0.2)
    # fg: A union {(0,0),(0,1)}, final both -> 1; B union 4 cells, final {(1,1)} -> 1/4
    assert K.stability(c, FG) == pytest.approx((1 + 0.25) / 2)
    # bg: A {(3,3)} kept -> 1; B {(2,2)} lost -> 0
    assert K.stability(c, ~FG) == pytest.approx(0.5)
    # all: A 3 of 3; B 1 of 5
    assert K.stability(c, np.ones_like(FG)) == pytest.approx((1 + 0.2) / 2)
    # an empty union counts 0 (upstream) or is excluded
    empty = np.zeros((2, 3, 4, 4), dtype=bool)
    empty[0, :, 0, 0] = True
    assert K.stability(empty, FG, "zero") == pytest.approx(0.5)
    assert K.stability(empty, FG, "exclude") == pytest.approx(1.0)


def test_effect_filter():
    h = example()
    # k0 has fg mean == bg mean (-2.0 / -1.8): rejected when k0 counts; epochs 5 and 10 pass
    assert K.effect_filter(h, FG, EPOCHS, min_epoch=5).tolist() == [True, True]
    assert K.effect_filter(h, FG, EPOCHS, min_epoch=0).tolist() == [False, False]
    assert K.effect_filter(h, FG, EPOCHS).tolist() == [True, True]  # default: >= ceil(10 * 40/150) = 3
    # B at k2 under top 25 %: fg lowest 1 cell = -2.4 < bg lowest 3 cells = -1.8 -> still passes
    assert K.effect_filter(h, FG, EPOCHS, 5, top_frac=0.25).tolist() == [True, True]
    h2 = h.copy()
    h2[1, 2, :2, :2] = -1.7  # B's foreground becomes more entropic than its background at epoch 10
    assert K.effect_filter(h2, FG, EPOCHS, min_epoch=5).tolist() == [True, False]
    h2[0, 2] = np.nan  # no map: rejected
    assert K.effect_filter(h2, FG, EPOCHS, min_epoch=5).tolist() == [False, False]


def test_run_metrics_on_the_example():
    r = K.run_metrics(example(), FG, EPOCHS, WD)
    assert r["n_images"] == 2
    assert r["N_fg"] == pytest.approx(1.5) and r["N_bg"] == pytest.approx(0.5)
    assert r["lambda_ratio"] == pytest.approx(5 / 6)
    assert (r["D_mean"], r["D_std"], r["D_var"]) == pytest.approx((2.5, 1.5, 2.25))
    assert (r["D_mean_bg"], r["D_std_bg"]) == pytest.approx((2.5, 1.5))  # bg peaks: A at 10, B at 5
    assert (r["rho"], r["rho_bg"], r["rho_all"]) == pytest.approx((0.625, 0.5, 0.6))
    assert r["peak_epoch"] == [10, 5]
    assert r["series"]["N_fg"] == pytest.approx([0, 2.5, 1.5])
    json.dumps(r)  # JSON-serialisable for metrics files
    # an image without a map (sigma_f = 0 at some checkpoint) is dropped before anything is computed
    h3 = np.concatenate([example(), np.full((1, 3, 4, 4), -2.0)])
    h3[2, 1] = np.nan
    r3 = K.run_metrics(h3, FG, EPOCHS, WD)
    assert r3["n_images"] == 2 and r3["image_index"] == [0, 1] and r3["N_fg"] == pytest.approx(1.5)


def test_invariants_on_random_maps():
    rng = np.random.default_rng(0)
    n, k, g = 12, 5, 8
    h = rng.normal(-2.8, 0.4, size=(n, k, g, g))
    fg = rng.random((n, g, g)) < 0.5
    r = K.run_metrics(h, fg, list(range(k)), np.cumsum(rng.random(k)) - 0.3, K.KnowledgeParams(b=0.1))
    n_fg, n_bg = np.array(r["per_image"]["N_fg"]), np.array(r["per_image"]["N_bg"])
    assert (n_fg + n_bg <= g * g).all() and (n_fg <= fg.sum((1, 2))[:, None]).all()
    for key in ("rho", "rho_bg", "rho_all", "lambda_ratio"):
        assert 0.0 <= r[key] <= 1.0
    c = K.concept_cells(h, K.background_baseline(h, fg), 0.1)
    assert (c[:, -1].sum((1, 2)) <= c.any(axis=1).sum((1, 2))).all()  # |S_K| <= |union S_k|
    assert r["D_std"] == pytest.approx(math.sqrt(r["D_var"]))


def _wd(cum):
    return {"layers": {"layer.weight": {"cumulative": cum, "cumulative_per_epoch": cum}}}


def test_wd_at_epochs():
    wd = _wd([0.0, 0.5, None, 2.0])
    np.testing.assert_allclose(K.wd_at_epochs(wd, "layer.weight", [0, 1, 3]), [0.0, 0.5, 2.0])
    assert math.isnan(K.wd_at_epochs(wd, "layer.weight", [2])[0])
    with pytest.raises(KeyError):
        K.wd_at_epochs(wd, "nope.weight", [0])
    with pytest.raises(ValueError):
        K.wd_at_epochs(wd, "layer.weight", [4])


def test_criterion_and_hypothesis_verdicts():
    assert K.criterion_verdict(1.0, 0.2, 1.8, "higher") == "holds"
    assert K.criterion_verdict(1.0, 0.2, 1.8, "lower") == "does not hold"
    assert K.criterion_verdict(-1.0, -1.8, -0.2, "lower") == "holds"
    assert K.criterion_verdict(0.5, -0.1, 1.1, "higher") == "inconclusive"  # the interval contains zero
    assert K.criterion_verdict(0.0, 0.0, 0.0, "higher") == "inconclusive"  # no difference is not "higher"
    assert K.criterion_verdict(float("nan"), 0.2, 1.8, "higher") == "inconclusive"
    assert K.hypothesis_verdict(["holds", "holds"]) == "holds"
    assert K.hypothesis_verdict(["holds", "inconclusive"]) == "inconclusive"
    assert K.hypothesis_verdict(["inconclusive", "does not hold"]) == "does not hold"  # a conjunction
    base = {"N_fg": 2.0, "N_bg": 3.0, "lambda_ratio": 0.4, "D_mean": 5.0, "D_std": 2.0, "rho": 0.5}
    good = {"N_fg": 3.0, "N_bg": 1.0, "lambda_ratio": 0.7, "D_mean": 4.0, "D_std": 1.0, "rho": 0.8}
    tight = {m: {"low": good[m] - base[m] - 0.01, "high": good[m] - base[m] + 0.01} for m in K.CRITERIA}
    h = K.hypotheses(good, base, tight)
    assert [h[k]["verdict"] for k in ("H1", "H2", "H3")] == ["holds"] * 3
    assert h["H1"]["checks"][1] == {"metric": "N_bg", "expect": "lower", "distilled": 1.0, "baseline": 3.0,
                                    "difference": -2.0, "low": -2.01, "high": -1.99, "verdict": "holds"}
    wide = dict(tight, rho={"low": -0.1, "high": 0.7})
    assert K.hypotheses(good, base, wide)["H3"]["verdict"] == "inconclusive"


def _scenes(rng, n, effect):
    """[n, 4, 8, 8] entropy maps: noise around -2, and ``effect`` nats lower on the 4x4 foreground from
    checkpoint 1 on (more foreground concepts, learnt early)."""
    h = -2.0 + rng.normal(0, 0.15, size=(n, 4, 8, 8))
    h[:, 1:, 2:6, 2:6] -= effect
    return h


def test_the_paired_bootstrap_decides_a_large_effect_and_leaves_a_null_one_inconclusive():
    rng = np.random.default_rng(0)
    fg = np.zeros((8, 8), bool)
    fg[2:6, 2:6] = True
    epochs, wd = [0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0]
    baseline = _scenes(rng, 16, 0.0)
    params = K.KnowledgeParams(bootstrap=300)
    out = K.compare({"entropy": _scenes(rng, 16, 0.6), "wd": wd}, {"entropy": baseline, "wd": wd}, fg, epochs, params)
    n_fg = {c["metric"]: c for c in out["hypotheses"]["H1"]["checks"]}["N_fg"]
    assert n_fg["verdict"] == "holds" and 0 < n_fg["low"] <= n_fg["difference"] <= n_fg["high"]
    assert out["bootstrap"]["paired"] and out["bootstrap"]["resamples"] == 300
    low, high = np.asarray(out["bootstrap"]["N_fg_interval"]["distilled"]).T
    assert np.all(low <= np.asarray(out["distilled"]["series"]["N_fg"]) + 1e-9) and high[-1] > low[-1]
    # The same network twice, on other images of the same kind: nothing may be decided.
    null = K.compare({"entropy": _scenes(rng, 16, 0.0), "wd": wd}, {"entropy": baseline, "wd": wd}, fg, epochs,
                     params)
    verdicts = [c["verdict"] for h in null["hypotheses"].values() for c in h["checks"]]
    assert verdicts.count("inconclusive") >= 5, verdicts  # at 95% at most a rare criterion is decided by chance
    again = K.compare({"entropy": _scenes(np.random.default_rng(0), 16, 0.0), "wd": wd},
                      {"entropy": baseline, "wd": wd}, fg, epochs, params)
    assert again["bootstrap"]["criteria"] == K.compare(
        {"entropy": _scenes(np.random.default_rng(0), 16, 0.0), "wd": wd},
        {"entropy": baseline, "wd": wd}, fg, epochs, params)["bootstrap"]["criteria"]  # seeded


def test_flat_curves_are_counted():
    h = example()
    h[1] = -1.8  # image B: no concept at any checkpoint, a flat N_fg curve
    out = K.run_metrics(h, FG, EPOCHS, WD)
    assert out["flat_fg_images"] == 1 + (out["per_image"]["N_fg"][0][-1] - out["per_image"]["N_fg"][0][0] <= 1)


def test_compare_runs_with_filter_and_intersection():
    h = example()
    baseline = h.copy()
    baseline[0, 2] = -2.0  # baseline image A loses its final concepts but still passes the filter
    baseline[0, 2, :2, :2] = -2.05
    baseline[1, 2, :2, :2] = -1.7  # baseline image B fails the effect filter at epoch 10
    params = K.KnowledgeParams(effect_filter=True, filter_min_epoch=5)
    out = K.compare({"entropy": h, "wd": WD}, {"entropy": baseline, "wd": [0.0, 2.0, 6.0]}, FG, EPOCHS, params)
    sel = out["selection"]
    assert sel["filter_pass"] == {"distilled": 2, "baseline": 1}
    assert sel["filter_pass_rate"] == {"distilled": 1.0, "baseline": 0.5}
    assert sel["n_compared"] == 1 and out["distilled"]["image_index"] == [0] == out["baseline"]["image_index"]
    assert out["unfiltered"]["distilled"]["n_images"] == 2
    # on image A alone the distilled run has 2 fg + 1 bg final concepts (baseline -2.05, b 0.2), the
    # baseline run none (its fg cells are only 0.05 below its background)
    d, b = out["distilled"], out["baseline"]
    assert (d["N_fg"], d["N_bg"], b["N_fg"], b["N_bg"]) == (2.0, 1.0, 0.0, 0.0)
    assert [c["difference"] for c in out["hypotheses"]["H1"]["checks"]][:2] == [2.0, 1.0]
    assert out["hypotheses"]["H1"]["verdict"] == "inconclusive"  # one image: no interval (MIN_BOOTSTRAP_IMAGES)
    assert set(out["hypotheses"]) == {"H1", "H2", "H3"}
    json.dumps(out)


def test_plots_render():
    from explain import plots

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8)
    h = example()
    figs = [
        plots.sigma_heatmaps(images[:2], h[:, -1], titles=["a", "b"], masks=np.stack([FG, ~FG])),
        plots.sigma_heatmaps(images[:2], np.exp(h[:, -1]), kind="sigma"),
        plots.sigma_over_epochs(images[:2], h, EPOCHS, title="net"),
        plots.concept_curves({"distilled": {"epochs": EPOCHS, "N_fg": [0, 2.5, 1.5], "N_bg": [0, 0.5, 0.5]},
                              "baseline": {"epochs": EPOCHS, "N_fg": [0, 1, 1], "N_bg": [1, 1, 1]}}),
    ]
    for fig in figs:
        fig.canvas.draw()
        plots.plt.close(fig)
