"""faiss k-means (what ``build_supervision`` runs) against scikit-learn's KMeans on the same teacher features.

The features are the teacher's last-stage locations over the un-augmented training set, exactly as the
stage extracts them (``methods.letkd.supervision.teacher_features``), and faiss runs exactly as the stage does
(``methods.letkd.supervision.kmeans``: all points, AFK-MC² seeding by default). Both get the same k, iteration
count, init count and seed, and a k-means++-type seeding (scikit-learn's default greedy k-means++);
scikit-learn runs Lloyd with ``tol=0`` so it does all its iterations too (faiss stops only when the
objective no longer changes). The final inertia of both is computed by the same exact L2 search
against their final centroids, so the ratio compares like with like.

    python bench/kmeans.py [--teacher data/teacher/model.pt] [--data data/prepared] [--k 256]
                           [--iterations 20] [--n-init 1] [--seed 0] [--max-points 0] [--init afkmc2]
                           [--sklearn-init k-means++]

Without a trained teacher / prepared data (a fresh clone) it builds the default ``scenes`` training set in
memory and uses an untrained teacher (said in the header). Threads: both libraries use OpenMP; set
OMP_NUM_THREADS to compare at a fixed count. The last line reads ``speedup <x> inertia_ratio <y>`` with
speedup = sklearn seconds / faiss seconds and inertia_ratio = faiss inertia / sklearn inertia.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from methods.letkd import supervision as sup  # noqa: E402
from core.device import device  # noqa: E402


def teacher_locations(teacher_path: Path, data_dir: Path, arch: str, batch_size: int):
    """(features [N·H·W, C], description) of the teacher's last stage over the un-augmented train split."""
    import models
    from dataset import store
    from models.saved import load_model

    dev = device()
    if (data_dir / "card.json").is_file():
        data = store.load_prepared(data_dir)
        source = f"{data.card['name']} ({data_dir})"
    else:
        from dataset import BUILDERS
        from dataset.params import DataParams

        train, test, classes, _ = BUILDERS["scenes"](DataParams())
        data = store.in_memory(train, test, classes, "scenes")
        source = "scenes (default params, built in memory)"
    if teacher_path.is_file():
        teacher = load_model(teacher_path, dev)
        who = f"{type(teacher).__name__} from {teacher_path}"
    else:
        torch.manual_seed(0)
        teacher = models.create(arch, data.num_classes).to(dev)
        who = f"UNTRAINED {arch} (no {teacher_path})"
    feats, grids = sup.teacher_features(teacher, data.train, data.card["mean"], data.card["std"],
                                        {"penult": (-1, 0)}, batch_size, dev, desc="teacher features")
    return feats["penult"], f"teacher {who}; {source}: {len(data.train.labels)} images x {grids['penult']} grid"


def sklearn_kmeans(x: np.ndarray, k: int, iterations: int, n_init: int, seed: int, init: str):
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    km = KMeans(n_clusters=k, init=init, n_init=n_init, max_iter=iterations, tol=0.0, random_state=seed,
                algorithm="lloyd").fit(x)
    return km.cluster_centers_.astype(np.float32), km.n_iter_, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=Path("data/teacher/model.pt"))
    ap.add_argument("--data", type=Path, default=Path("data/prepared"))
    ap.add_argument("--arch", default="resnet20", help="untrained fallback teacher when --teacher is absent")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--n-init", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-points", type=int, default=0, help="random subset of the locations (0 = all)")
    ap.add_argument("--init", default="afkmc2", choices=list(sup.INITS), help="faiss seeding (the stage's default)")
    ap.add_argument("--sklearn-init", default="k-means++", choices=["k-means++", "random"])
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    x, what = teacher_locations(args.teacher, args.data, args.arch, args.batch_size)
    if args.max_points and args.max_points < len(x):
        x = x[np.sort(np.random.default_rng(args.seed).choice(len(x), args.max_points, replace=False))]
    x = np.ascontiguousarray(x, dtype=np.float32)
    print(what)
    print(f"{len(x)} locations x {x.shape[1]} dims, k={args.k}, {args.iterations} iterations, "
          f"n_init={args.n_init}, seed={args.seed}, torch threads {torch.get_num_threads()}")

    fa = sup.kmeans(x, args.k, args.iterations, args.seed, n_init=args.n_init, init=args.init)
    sk_centroids, sk_iters, sk_seconds = sklearn_kmeans(x, args.k, args.iterations, args.n_init, args.seed,
                                                        args.sklearn_init)
    sk_inertia = float(sup.nearest(x, sk_centroids)[1].sum())
    rows = [(f"faiss ({fa.device}, {args.init} init)", fa.seconds, fa.final_inertia, len(fa.inertia)),
            (f"scikit-learn KMeans ({args.sklearn_init} init)", sk_seconds, sk_inertia, sk_iters)]
    print(f"{'implementation':40s} {'seconds':>9s} {'final inertia':>15s} {'iterations':>10s}")
    for name, seconds, inertia, iters in rows:
        print(f"{name:40s} {seconds:9.2f} {inertia:15.6g} {iters:10d}")
    print(f"speedup {sk_seconds / fa.seconds:.2f} inertia_ratio {fa.final_inertia / sk_inertia:.4f}")


if __name__ == "__main__":
    main()
