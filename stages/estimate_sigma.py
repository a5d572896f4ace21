"""Stage ``estimate_sigma@<role>``: sigma/entropy maps of one network at every kept checkpoint.

``python -m stages.estimate_sigma baseline|student``. For each checkpoint ``data/<role>/checkpoints/
epoch_XXX.pt`` ``sigma.n_images`` test images (those with a foreground mask first:
``explain.knowledge.select_images``) get their sigma map (explain/sigma.py), with the same seed and image
ids for every checkpoint and both models (common random numbers). Writes ``data/sigma/<role>/sigma.npz``
(deterministic bytes) and ``metrics/sigma_<role>.json``; logs a few sigma heat maps to MLflow.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from core import checkpoint
from dataset.store import load_prepared
from core.device import device
from core.errors import KdlensError
from core.files import sha256_file, write_json, write_npz
import methods
from models.saved import METHOD_PARTS, load_model, load_weights
from stages.params import load_params
from core.stage import run_stage
from core.tracking import StageRun
from explain.knowledge import select_images
from explain.plots import sigma_heatmaps
from explain.sigma import estimate_sigma, model_feature_fn, summary

from core.paths import CHECKPOINT_DIR, DATA, PARAMS, kept_checkpoints, metrics_path, model_path, role_dir, sigma_path

ROLES = ("baseline", "student")
def checkpoints(role: str) -> list[tuple[int, Path]]:
    found = list(kept_checkpoints(role_dir(role) / CHECKPOINT_DIR).items())
    if not found:
        raise KdlensError(f"{role_dir(role) / CHECKPOINT_DIR}: no kept checkpoints; set student.train.keep_epochs")
    return found


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ROLES:
        raise KdlensError(f"usage: python -m stages.estimate_sigma {{{'|'.join(ROLES)}}}")
    role = sys.argv[1]
    p = load_params(PARAMS)
    cfg = p.sigma

    dev = device()
    data = load_prepared(DATA)
    test = data.test
    ids = select_images(test, cfg.n_images)
    if len(ids) == 0:
        raise KdlensError("no test image to analyse")
    mean = torch.tensor(data.card["mean"], device=dev).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(data.card["std"], device=dev).view(1, -1, 1, 1) * 255.0
    raw = torch.from_numpy(test.images_at(ids)).to(dev)
    images = (raw.float() - mean) / std  # as dataset.loader.BatchLoader.normalise
    saved = model_path(role)
    model = load_model(saved, dev, methods.restore_parts)
    ckpts = checkpoints(role)
    epochs = [e for e, _ in ckpts]
    method = p.method if role == "student" else "ce"
    inputs = {"data_sha256": data.card["sha256"], "model_sha256": sha256_file(saved)}
    params = {"sigma": cfg.model_dump(), "role": role, "epochs": epochs}
    with StageRun.keyed(f"estimate_sigma@{role}", data.card["name"], params, inputs,
                        {"n_images": len(ids), "device": str(dev)}, method) as run:
        t0 = time.perf_counter()
        results = []
        with tqdm(total=len(ckpts) * cfg.steps, desc=f"sigma {role}", disable=None) as bar:
            for epoch, path in ckpts:
                state = checkpoint.load(path, map_location=dev, required=("model",))
                load_weights(model, state)
                fn = model_feature_fn(model, cfg.tap, cfg.index)
                bar.set_description(f"sigma {role} epoch {epoch}")
                res = estimate_sigma(fn, images, cfg, seed=cfg.seed, image_ids=ids.tolist(), progress=bar)
                results.append(res)
                s = summary(res)
                run.log_metrics({f"sigma/{k}": v for k, v in s.items() if isinstance(v, (int, float))}, step=epoch)
        seconds = time.perf_counter() - t0
        arrays = [r.as_numpy() for r in results]
        stack = {k: np.stack([a[k] for a in arrays], axis=1) for k in arrays[0]}  # [N, K, ...]
        out = {**stack, "epochs": np.asarray(epochs, dtype=np.int64), "image_ids": ids.astype(np.int64),
               "target": np.asarray(results[0].target, dtype=np.float64)}
        out_path = sigma_path(role)
        write_npz(out_path, out)
        per_ckpt = {int(e): summary(r) for e, r in zip(epochs, results)}
        eff = stack["effective"]
        steps = stack["selected_step"][eff]
        hit = [v["hit_target_rate"] for v in per_ckpt.values() if v["n_effective"]]
        metrics = {
            "role": role, "method": method, "dataset": data.card["name"], "epochs": epochs,
            "n_images": int(len(ids)), "image_ids": ids.tolist(), "shape": list(stack["entropy"].shape),
            "n_effective": int(eff.all(axis=1).sum()), "n_effective_per_checkpoint": eff.sum(axis=0).tolist(),
            "hit_target_rate": float(np.mean(hit)) if hit else float("nan"),
            "selected_step_mean": float(steps.mean()) if steps.size else float("nan"),
            "selected_step_min": int(steps.min()) if steps.size else -1,
            "selected_step_max": int(steps.max()) if steps.size else -1,
            "target_entropy": float(results[0].target), "layer": f"{cfg.tap}[{cfg.index}]",
            "with_method_parts": model.has_extension(METHOD_PARTS),  # e.g. letKD's KD layers, as evaluated
            "per_checkpoint": {str(k): v for k, v in per_ckpt.items()}, "seconds": seconds,
            "sha256": sha256_file(out_path), "mlflow_run_id": run.run_id, "params_hash": run.key,
        }
        write_json(metrics_path(f"sigma_{role}"), metrics)
        run.log_metrics({"n_effective": metrics["n_effective"], "hit_target_rate": metrics["hit_target_rate"],
                         "selected_step_mean": metrics["selected_step_mean"], "seconds": seconds})
        shown = min(6, len(ids))
        fig = sigma_heatmaps(raw[:shown].cpu().numpy(), stack["entropy"][:shown, -1],
                             titles=[f"test #{i}" for i in ids[:shown]])
        fig.suptitle(f"{role}: entropy maps at epoch {epochs[-1]}", fontsize=9)
        run.log_figure(fig, f"plots/sigma_{role}_epoch{epochs[-1]:03d}.png")
        run.log_artifact(metrics_path(f"sigma_{role}"))
        print(f"estimate_sigma@{role}: {len(ids)} images x {len(epochs)} checkpoints in {seconds:.1f} s",
              file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
