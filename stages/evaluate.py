"""Evaluate any network file on the prepared test split (a command, not a pipeline stage):

    python -m stages.evaluate data/student/model.pt                 # a kdlens teacher or student
    python -m stages.evaluate data/student/checkpoints/epoch_010.pt  # a kept epoch (arch from ../model.pt)
    python -m stages.evaluate teachers/resnet56.pth --arch resnet56  # an imported file (models/imported.py)
    python -m stages.evaluate PATH [--arch A] [--data data/prepared] [--json]

Prints one line: top-1, top-5 and mean cross-entropy. ``--json`` prints a JSON object instead, adding the
per-class top-1 and the expected calibration error (explain/calibration.py). A bad path, arch or file
stops with one line.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import methods
import models
from core import checkpoint
from core.device import device
from core.errors import KdlensError
from core.paths import DATA, MODEL_FILE
from core.stage import run_stage
from dataset.params import DataParams
from dataset.store import load_prepared
from explain.calibration import expected_calibration_error, per_class_accuracy
from models.saved import load_model, load_weights
from training.fitter import loaders
from training.params import TrainParams
from training.trainer import evaluate, predict


def network(path: Path, arch: str | None, num_classes: int) -> tuple[torch.nn.Module, str, str]:
    """(network, its arch, the file's layout) for a model.pt, a kept epoch or a file to import."""
    state = checkpoint.load(path)
    sibling = path.parent.parent / MODEL_FILE  # data/<role>/checkpoints/epoch_XXX.pt -> data/<role>/model.pt
    if "meta" not in state and "epoch" in state and path.parent.name == "checkpoints" and sibling.exists():
        net = load_model(sibling, torch.device("cpu"), methods.restore_parts)
        load_weights(net, state)
        layout, meta = f"kept epoch {state['epoch']} of {sibling}", checkpoint.load(sibling)["meta"]
    elif "meta" in state:
        net, layout, meta = load_model(path, torch.device("cpu"), methods.restore_parts), models.imported.KDLENS, state["meta"]
    else:
        if arch is None:
            raise KdlensError(f"{path}: not a kdlens model.pt, so its architecture is not in the file; pass --arch "
                              f"(one of: {', '.join(models.names())})")
        net, layout = models.import_checkpoint(arch, path, num_classes)
        return net, arch, layout
    if arch is not None and arch != meta["arch"]:
        raise KdlensError(f"{path}: a {meta['arch']} network, not --arch {arch}; drop --arch or pass {meta['arch']}")
    if meta["num_classes"] != num_classes:
        raise KdlensError(f"{path}: {meta['num_classes']} classes, the prepared data {num_classes}; "
                          "evaluate it on the data it was trained for (--data)")
    return net, meta["arch"], layout


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--arch", default=None, help="the architecture of a file that is not a kdlens model.pt")
    ap.add_argument("--data", type=Path, default=DATA, help="a prepared data directory (stage prepare_data)")
    ap.add_argument("--json", action="store_true", help="print JSON, with per-class top-1 and calibration error")
    ap.add_argument("--workers", type=int, default=DataParams().workers,
                    help="decoding processes of a streamed dataset (data.workers)")
    args = ap.parse_args()
    if args.arch is not None and args.arch not in models.names():
        raise KdlensError(f"--arch: unknown model {args.arch!r}; choose one of: {', '.join(models.names())}")
    if not (args.data / "card.json").exists():
        raise KdlensError(f"{args.data}: no prepared data; run `dvc repro prepare_data` or pass --data")
    data = load_prepared(args.data, args.workers)
    net, arch, layout = network(args.path, args.arch, data.num_classes)
    dev = device()
    net = net.to(dev)
    _, test = loaders(data, TrainParams(), 0, dev)
    result = evaluate(net, test, desc=f"evaluate {args.path.name}")
    head = {"path": str(args.path), "arch": arch, "layout": layout, "dataset": data.card["name"],
            "test_images": test.num_samples, **result}
    if not args.json:
        print(f"{args.path} ({arch}, {layout}) on {data.card['name']} test ({test.num_samples} images): "
              f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")
        return
    logits, labels = predict(net, test, desc="per class")
    logits, labels = logits.cpu(), labels.cpu()
    head["ece"] = expected_calibration_error(logits, labels)
    head["per_class_top1"] = dict(zip(data.card["classes"], per_class_accuracy(logits, labels, data.num_classes)))
    print(json.dumps(head, indent=2))


if __name__ == "__main__":
    run_stage(main)
