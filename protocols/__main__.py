"""Run published protocols as DVC experiments:

    python -m protocols protocols/cifar100/resnet56-resnet20/kd.yaml      # one run, in the workspace
    python -m protocols protocols/cifar100/resnet56-resnet20 --queue      # a row of the table, queued
    python -m protocols protocols/cifar100 --queue --seeds 3              # the whole table, 3 seeds each
    python -m protocols protocols/imagenet/imagenet_resnet34-imagenet_resnet18/dkd.yaml   # an ImageNet row
    ... --target distill                                                  # only up to the student (no σ, no report)
    ... [--dry-run] [-S key=value ...]                                    # print only; extra overrides

Each file becomes ``dvc exp run [--queue] [TARGET] -n <pair>-<method>[-seed<k>] -S key=value ...``. Every file
is validated (merged onto params.yaml, as check_params validates it) before the first experiment starts,
so a bad file stops the lot in one line naming it.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from core.errors import KdlensError
from core.schema import read_yaml
from core.paths import PARAMS
from core.stage import run_stage
from stages.params import parse_params

from . import files


def read_protocol(path: Path) -> dict:
    try:
        sets = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KdlensError(f"{path}: not a readable protocol file ({str(e).splitlines()[0]})") from None
    if not isinstance(sets, dict) or not all(isinstance(k, str) for k in sets):
        raise KdlensError(f"{path}: a protocol is a mapping of dotted params keys to values")
    return sets


def merged(params: dict, sets: dict, source: str) -> dict:
    """params.yaml with the dotted ``sets`` applied; a key params.yaml does not have is refused."""
    out = copy.deepcopy(params)
    for key, value in sets.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise KdlensError(f"{source}: {key}: not a key of {PARAMS}; check the spelling against {PARAMS}")
        node[leaf] = value
    return out


def overrides(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise KdlensError(f"-S {item}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def command(name: str, sets: dict, queue: bool, target: str | None) -> list[str]:
    # JSON is YAML, as DVC reads each -S value: strings stay strings, lists stay lists.
    return ["dvc", "exp", "run", *(["--queue"] if queue else []), *([target] if target else []), "-n", name,
            *(arg for k, v in sets.items() for arg in ("-S", f"{k}={json.dumps(v)}"))]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m protocols", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="protocol files, or directories of them")
    ap.add_argument("--queue", action="store_true", help="queue the experiments (then: dvc queue start)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 of each (default: params.yaml's)")
    ap.add_argument("--target", default=None, help="run the pipeline only up to this stage (e.g. distill: the "
                    "published numbers need neither the baseline, the σ maps nor the report)")
    ap.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    ap.add_argument("-S", dest="sets", action="append", default=[], help="an extra key=value for every run")
    args = ap.parse_args()
    params, extra = read_yaml(PARAMS), overrides(args.sets)
    runs = []
    for path in (f for p in args.paths for f in files(p)):
        if not path.is_file():
            raise KdlensError(f"{path}: no such protocol file; the protocols are under protocols/cifar100/ and protocols/imagenet/")
        sets = {**read_protocol(path), **extra}
        for seed in range(args.seeds) if args.seeds else [None]:
            run = {**sets, **({"seed": seed} if seed is not None else {})}
            p = parse_params(merged(params, run, str(path)), str(path), every_method=False)
            p.method_params()
            name = f"{path.parent.name}-{path.stem}" + (f"-seed{seed}" if seed is not None else "")
            runs.append(command(name, run, args.queue, args.target))
    for cmd in runs:
        print(shlex.join(cmd), flush=True)
        if not args.dry_run and subprocess.run(cmd).returncode != 0:
            sys.exit(f"protocols: {cmd[cmd.index('-n') + 1]} failed; the experiments after it were not started")


if __name__ == "__main__":
    run_stage(main)
