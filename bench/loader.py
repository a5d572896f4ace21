"""kdlens's streaming training loader against torchvision's ImageFolder + DataLoader, on a generated folder.

Both read the same ImageNet-layout folder of JPEGs (``train/<class>/*``, ``val/<class>/*``) and give the
same training views: RandomResizedCrop(size) (scale 0.08-1, ratio 3/4-4/3, bilinear, antialiased) +
horizontal flip, normalised with ImageNet's mean/std, in batches of ``--batch`` from ``--workers``
DataLoader processes, shuffled, the last partial batch dropped.

* **kdlens**: ``prepare(DataParams(name="imagenet", ...))`` (its own subprocess, as the ``prepare_data``
  stage is; timed and reported apart, not counted in images/s), then in a fresh process
  ``load_prepared`` + ``loader_for(..., augment=True, shuffle=True, drop_last=True)`` and
  ``loader.batches(epoch=1)``: views drawn from (seed, epoch, index), JPEG draft decoding, uint8 batches
  from the workers normalised in the consuming process (dataset/stream.py, dataset/loader.py).
* **torchvision**: ``ImageFolder(root/train, v2.Compose([RandomResizedCrop(size), RandomHorizontalFlip(),
  ToImage(), ToDtype(float32, scale=True), Normalize(mean, std)]))`` in a ``DataLoader(batch_size,
  shuffle=True, num_workers, drop_last=True)``: float32 batches built in the workers.

Each loader runs one epoch in a fresh subprocess (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, so
the comparison is about decoding): the first ``--warmup`` batches (worker start-up included) are not
timed; images/s counts the rest of the epoch, up to its last batch. Every run is repeated ``--repeats``
times, alternating which loader goes first (a shared machine's load then hits both alike), and the
median is reported, with each run's rate and the CPU time of the whole process tree per image over the
same span (``CPU ms/image``: steadier than wall time when other jobs share the cores).

Memory is measured in one more run of each: the peak over time of the summed PSS
(``/proc/<pid>/smaps_rollup``) of the process and all its children (the DataLoader workers), sampled
every 50 ms at best by a thread of this script's own process, outside the measured tree. PSS splits the
pages forked workers share, so they are not counted once per worker; the summed RSS (which counts them
in every process) is printed for reference, and ``anon PSS`` (Pss_Anon + Pss_Shmem: PSS less the
file-backed pages of the libraries, whose share also depends on what else runs torch on the machine) as
the part the loaders control. Memory runs are apart from the timed ones because reading smaps_rollup
walks a process's page tables: ~16 ms for a process that has imported torch, so sampling three
processes every 50 ms takes most of a core (the achieved interval is printed).
The folder's files are read once before each run, so both loaders read from the page cache (which PSS
does not count).

Two folder sizes (``--sizes``, default 2,000 and 4,000 training images) show whether peak memory grows
with the number of images (the index should not). The folder (``--classes`` classes, ~400x350 px JPEGs
of smooth random content, quality 90, 300-500 x 250-450 px) is generated with a thread pool into a
temporary directory, or into ``--dir`` to keep and reuse; the smaller folders hard-link the largest's
files. A per-image profile of the two transforms and their parts in one process (``--profile`` images,
no workers) is printed first.

    python bench/loader.py [--sizes 2000,4000] [--workers 2] [--batch 64] [--size 224] [--warmup 3]
                           [--repeats 3] [--classes 20] [--val-per-class 10] [--profile 200] [--dir DIR]

Goal: speedup >= 1.0 and rss_ratio <= 1.1. The last line reads ``speedup <x> rss_ratio <y>`` with
speedup = kdlens images/s / torchvision images/s and rss_ratio = kdlens peak PSS / torchvision peak PSS,
both at the largest size (``--repeats 1`` on a busy machine gives noisy ratios).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADERS = ("torchvision", "kdlens")
MB = 1 << 20


# ------------------------------------------------------------------------------------------- the folder
def _photo(seed: tuple[int, ...]) -> Image.Image:
    """A smooth random RGB image of about 400x350 px: upsampled low-resolution noise at two scales, a
    colour gradient and a little grain (compresses like a photo, unlike white noise); Pillow does the
    pixel work, so threads run it in parallel."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(300, 501)), int(rng.integers(250, 451))

    def up(a: np.ndarray, resample=Image.Resampling.BICUBIC) -> Image.Image:
        return Image.fromarray(a).resize((w, h), resample)

    coarse = up(rng.integers(0, 256, (int(rng.integers(4, 9)), int(rng.integers(4, 9)), 3), dtype=np.uint8))
    fine = up(rng.integers(0, 256, (h // 12, w // 12, 3), dtype=np.uint8))
    ramp = up(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8), Image.Resampling.BILINEAR)
    grain = Image.fromarray(rng.integers(124, 133, (h, w), dtype=np.uint8)).convert("RGB")
    return ImageChops.add(Image.blend(Image.blend(coarse, ramp, 0.4), fine, 0.3), grain, 1.0, -128)


def _write(path: Path, seed: tuple[int, ...], quality: int) -> int:
    _photo(seed).save(path, "JPEG", quality=quality)
    return path.stat().st_size


def make_folder(root: Path, n_train: int, classes: int, val_per_class: int, quality: int = 90,
                like: Path | None = None) -> dict:
    """An ImageNet-layout folder of ``n_train`` training JPEGs over ``classes`` classes (image k of class c
    is the same in every folder); ``like``: a larger folder to hard-link the files from. Reused when its
    manifest matches."""
    manifest = {"n_train": n_train, "classes": classes, "val_per_class": val_per_class, "quality": quality,
                "version": 2}
    mpath = root / "bench_manifest.json"
    if mpath.is_file() and json.loads(mpath.read_text()).get("params") == manifest:
        return json.loads(mpath.read_text())
    shutil.rmtree(root, ignore_errors=True)
    jobs = []
    for split, per_class in (("train", None), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            count = per_class if per_class is not None else n_train // classes + (c < n_train % classes)
            for k in range(count):
                name = f"n{c:08d}_{k:05d}.JPEG"
                jobs.append((d / name, (0 if split == "train" else 1, c, k), like / split / d.name / name
                             if like is not None else None))
    t0 = time.perf_counter()

    def one(job) -> int:
        path, seed, src = job
        if src is not None and src.is_file():
            try:
                os.link(src, path)
            except OSError:
                shutil.copyfile(src, path)
            return path.stat().st_size
        return _write(path, seed, quality)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:  # Pillow releases the GIL while it encodes
        sizes = list(pool.map(one, jobs, chunksize=16))
    info = {"params": manifest, "files": len(jobs), "bytes": int(sum(sizes)),
            "seconds": round(time.perf_counter() - t0, 2)}
    mpath.write_text(json.dumps(info) + "\n")
    return info


def warm_cache(root: Path) -> None:
    """Read every file once, so both loaders find the folder in the page cache."""
    for path in sorted(root.rglob("*.JPEG")):
        path.read_bytes()


# ------------------------------------------------------------------------------------------- memory
FIELDS = {"Pss:": "pss", "Rss:": "rss", "Pss_Anon:": "anon", "Pss_Shmem:": "anon"}


def _rollup(pid: int) -> dict[str, int]:
    """PSS, RSS and anonymous + shared-memory PSS (``anon``: PSS less the file-backed pages, the libraries'
    code and data, which other processes on the machine share too), in bytes, of one process; zeros once it
    is gone."""
    out = dict.fromkeys(FIELDS.values(), 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(maxsplit=1)[0]
                if key in FIELDS:
                    out[FIELDS[key]] += int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


class PeakMemory:
    """The peak over time of the summed PSS, RSS and anon PSS of process ``pid`` and its descendants,
    sampled every ``interval`` s (at best) by a thread of this process, outside the measured tree: a
    sampler thread inside it would take its CPU and GIL and change how its allocator spreads memory
    over arenas."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self.proc, self.interval = psutil.Process(pid), interval
        self.pss = self.rss = self.anon = 0
        self.processes = 1
        self.samples, self._t0, self.seconds = 0, time.perf_counter(), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        try:
            pids = [self.proc.pid] + [c.pid for c in self.proc.children(recursive=True)]
        except psutil.Error:  # it has exited
            return
        per = [_rollup(p) for p in pids]
        pss, rss, anon = (sum(x[k] for x in per) for k in ("pss", "rss", "anon"))
        self.pss, self.rss, self.anon = max(self.pss, pss), max(self.rss, rss), max(self.anon, anon)
        self.processes = max(self.processes, len(pids))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._t0

    @property
    def mean_interval(self) -> float:
        """Seconds between samples, as achieved (reading smaps_rollup walks a process's page tables)."""
        return self.seconds / max(self.samples - 1, 1)


# ------------------------------------------------------------------------------------------- one run
def _cpu_seconds() -> float:
    """User + system CPU seconds so far of this process and its children (the workers)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _epoch(batches, warmup: int, batch: int, steps: int) -> dict:
    """Iterate the ``steps`` batches of ``batches``; time (wall and CPU of the process tree) from the
    ``warmup``-th batch to the last one, while the workers still run (torchvision's exit with the epoch)."""
    t0 = time.perf_counter()
    first, n, cpu0, timed_from = None, 0, 0.0, t0
    for step, (x, y) in enumerate(batches):
        if step == 0:
            first = time.perf_counter() - t0
            assert x.shape[0] == batch and x.dtype.is_floating_point, (x.shape, x.dtype)
        if step < warmup:
            if step == warmup - 1:
                timed_from, cpu0 = time.perf_counter(), _cpu_seconds()
            continue
        n += len(y)
        if step == steps - 1:
            seconds, cpu = time.perf_counter() - timed_from, _cpu_seconds() - cpu0
    assert step == steps - 1 and n > 0, (step, steps, n)
    return {"images": n, "seconds": seconds, "cpu_s": cpu, "first_batch_s": first, "steps": steps}


def child(args) -> None:
    """One run in this (fresh) process; prints one JSON line."""
    import torch

    torch.set_num_threads(1)
    from dataset import load_prepared, loader_for, prepare
    from dataset.params import DataParams
    from dataset.stream import IMAGENET_MEAN, IMAGENET_STD

    start = _rollup(os.getpid())  # after the imports, before any loader
    if args.child == "prepare":
        t0 = time.perf_counter()
        card = prepare(DataParams(name="imagenet", root=str(args.root), image_size=args.size,
                                  workers=args.workers), args.prepared)
        out = {"seconds": time.perf_counter() - t0, "images": card["counts"]["train"] + card["counts"]["test"],
               "skipped": card["skipped"]["images"]}
    elif args.child == "kdlens":
        data = load_prepared(args.prepared, workers=args.workers)
        loader = loader_for(data.train, data.card["mean"], data.card["std"], args.batch, torch.device("cpu"),
                            augment=True, shuffle=True, seed=0, drop_last=True)
        out = _epoch(((x, y) for x, y, _ in loader.batches(epoch=1)), args.warmup, args.batch, len(loader))
    else:
        from torch.utils.data import DataLoader
        from torchvision.datasets import ImageFolder
        from torchvision.transforms import v2

        tf = v2.Compose([v2.RandomResizedCrop(args.size, antialias=True), v2.RandomHorizontalFlip(),
                         v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        ds = ImageFolder(str(args.root / "train"), transform=tf)
        loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                            drop_last=True, generator=torch.Generator().manual_seed(0))
        out = _epoch(iter(loader), args.warmup, args.batch, len(loader))
    out.update(start_pss=start["pss"], start_anon=start["anon"])
    print(json.dumps(out))


def spawn(kind: str, root: Path, prepared: Path, args, memory: bool) -> dict:
    """Run ``kind`` in a fresh process; with ``memory``, sample its process tree's memory from here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--root", str(root),
           "--prepared", str(prepared), "--workers", str(args.workers), "--batch", str(args.batch),
           "--size", str(args.size), "--warmup", str(args.warmup)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if memory:
        with PeakMemory(proc.pid) as mem:
            stdout, stderr = proc.communicate()
    else:
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"{kind} run failed (rc {proc.returncode}):\n{stderr[-4000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    if memory:
        out.update(peak_pss=mem.pss, peak_rss=mem.rss, peak_anon=mem.anon, processes=mem.processes,
                   interval=mem.mean_interval)
    return out


# ------------------------------------------------------------------------------------------- profile
def profile(root: Path, n: int, size: int) -> list[tuple[str, float]]:
    """Median ms per image, in this process (one thread, no workers), of kdlens's training view and the
    torchvision transform on the same ``n`` images, and of their parts."""
    import torch
    from torchvision.transforms import v2

    from dataset.stream import IMAGENET_MEAN, IMAGENET_STD, train_view, view_seed

    torch.set_num_threads(1)
    paths = sorted((root / "train").rglob("*.JPEG"))
    paths = paths[:: max(1, len(paths) // n)][:n]
    tv_u8 = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage()])
    tv_full = v2.Compose([tv_u8, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1) * 255

    def decode(p):
        with Image.open(p) as im:
            im.load()

    def kd(p, i):
        with Image.open(p) as im:
            return train_view(im, size, 0, 1, i)

    def kd_norm(p, i):
        return (kd(p, i).float() - mean) / std

    def tv(p, _):
        with Image.open(p) as im:
            return tv_full(im.convert("RGB"))

    def tv8(p, _):
        with Image.open(p) as im:
            return tv_u8(im.convert("RGB"))

    def seed_all(_, i):  # what train_view does before drawing its crop
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(0, 1, i))

    def seed_cpu(_, i):  # the same CPU generator state, without seeding (lazily) CUDA/MPS/XPU too
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(view_seed(0, 1, i))

    cases = [("decode only (full scale)", lambda p, i: decode(p)),
             ("kdlens view seed: fork_rng + torch.manual_seed", seed_all),
             ("(alternative: fork_rng + torch.default_generator.manual_seed)", seed_cpu),
             ("kdlens train_view (uint8)", kd),
             ("kdlens train_view + normalise", kd_norm),
             ("torchvision crop+flip+ToImage (uint8)", tv8),
             ("torchvision full transform (float32)", tv)]
    for _, fn in cases:  # warm-up
        for i, p in enumerate(paths[:10]):
            fn(p, i)
    times = {name: [] for name, _ in cases}
    for i, p in enumerate(paths):  # interleaved, so load on a shared machine hits every case alike
        for name, fn in cases:
            t0 = time.perf_counter()
            fn(p, i)
            times[name].append(time.perf_counter() - t0)
    return [(name, 1e3 * statistics.median(t)) for name, t in times.items()]


# ------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,4000", help="training images per folder, comma-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="the side of every view")
    ap.add_argument("--warmup", type=int, default=3, help="batches not timed at the start of the epoch (>= 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--profile", type=int, default=200, help="images in the per-image profile (0: skip it)")
    ap.add_argument("--dir", type=Path, default=None, help="where to generate (and reuse) the folders")
    ap.add_argument("--child", choices=("prepare", *LOADERS), help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.warmup < 1 or min(sizes) // args.batch <= args.warmup:
        ap.error(f"--warmup must be >= 1 and leave timed batches: {min(sizes)} images make "
                 f"{min(sizes) // args.batch} batches of {args.batch}")
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="kdlens-loader-bench-")
        base = Path(tmp.name)
    else:
        base = args.dir
        base.mkdir(parents=True, exist_ok=True)
    try:
        import PIL
        import torch
        import torchvision
        from PIL import features

        print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__} "
              f"(libjpeg-turbo {features.check_feature('libjpeg_turbo')}); {os.cpu_count()} CPUs, load "
              f"{os.getloadavg()[0]:.2f}; workers {args.workers}, batch {args.batch}, size {args.size}, "
              f"warm-up {args.warmup} batches, repeats {args.repeats}")
        roots = {}
        for n in reversed(sizes):  # the largest first: the smaller ones hard-link its files
            roots[n] = base / f"imagenet_{n}"
            info = make_folder(roots[n], n, args.classes, args.val_per_class,
                               like=roots[sizes[-1]] if n != sizes[-1] else None)
            print(f"folder {roots[n]}: {n} train + {args.classes * args.val_per_class} val JPEGs, "
                  f"{info['bytes'] / info['files'] / 1024:.1f} KiB each on average, generated in "
                  f"{info['seconds']:.1f} s")

        if args.profile:
            rows = profile(roots[sizes[-1]], args.profile, args.size)
            print(f"\nper-image cost in one process (median ms over {args.profile} images, 1 thread):\n")
            print("| step | ms/image |\n|---|---|")
            for name, ms in rows:
                print(f"| {name} | {ms:.2f} |")

        results: dict[tuple[str, int], dict] = {}
        prepared: dict[int, dict] = {}
        for n in sizes:
            prep_dir = base / f"prepared_{n}"
            warm_cache(roots[n])
            prepared[n] = spawn("prepare", roots[n], prep_dir, args, memory=True)
            timed = {k: [] for k in LOADERS}
            for r in range(args.repeats):  # timing runs, no sampler: alternate which loader goes first
                for kind in (LOADERS if r % 2 == 0 else LOADERS[::-1]):
                    warm_cache(roots[n])
                    timed[kind].append(spawn(kind, roots[n], prep_dir, args, memory=False))
            for kind in LOADERS:
                warm_cache(roots[n])
                mem = spawn(kind, roots[n], prep_dir, args, memory=True)
                rs = timed[kind]
                results[kind, n] = {"rate": statistics.median(x["images"] / x["seconds"] for x in rs),
                                    "rates": [x["images"] / x["seconds"] for x in rs], "images": rs[0]["images"],
                                    "first": statistics.median(x["first_batch_s"] for x in rs),
                                    "cpu_ms": statistics.median(1e3 * x["cpu_s"] / x["images"] for x in rs),
                                    "pss": mem["peak_pss"], "rss": mem["peak_rss"], "processes": mem["processes"],
                                    "interval": mem["interval"], "start": mem["start_pss"],
                                    "anon": mem["peak_anon"], "start_anon": mem["start_anon"]}

        print(f"\none epoch, {args.workers} workers, batch {args.batch}, {args.size} px; images/s: median of "
              f"{args.repeats} runs, over the epoch after {args.warmup} warm-up batches; peaks: one more run each, "
              f"sampled, summed over the process tree\n")
        print("| loader | images | images/s | images/s per worker | peak PSS MB | peak RSS MB | CPU ms/image "
              "| peak anon PSS MB |")
        print("|---|---|---|---|---|---|---|---|")
        for n in sizes:
            for kind in LOADERS:
                r = results[kind, n]
                print(f"| {kind} | {n} | {r['rate']:.1f} | {r['rate'] / max(args.workers, 1):.1f} | "
                      f"{r['pss'] / MB:.0f} | {r['rss'] / MB:.0f} | {r['cpu_ms']:.2f} | {r['anon'] / MB:.0f} |")
        print("\nkdlens / torchvision: speedup = images/s ratio (median runs; best run of each), CPU ms/image "
              "ratio, peak memory ratios\n")
        print("| images | speedup | best-of speedup | CPU/image | PSS | RSS | anon PSS |")
        print("|---|---|---|---|---|---|---|")
        for n in sizes:
            kd, tv = results["kdlens", n], results["torchvision", n]
            print(f"| {n} | {kd['rate'] / tv['rate']:.3f} | {max(kd['rates']) / max(tv['rates']):.3f} | "
                  f"{kd['cpu_ms'] / tv['cpu_ms']:.3f} | {kd['pss'] / tv['pss']:.3f} | {kd['rss'] / tv['rss']:.3f} | "
                  f"{kd['anon'] / tv['anon']:.3f} |")
        print()
        for n in sizes:
            kd, tv, p = results["kdlens", n], results["torchvision", n], prepared[n]
            print(f"{n} images: kdlens prepare {p['seconds']:.2f} s for {p['images']} images ({p['skipped']} skipped, "
                  f"peak PSS {p['peak_pss'] / MB:.0f} MB), not counted above; first batch kdlens {kd['first']:.2f} s, "
                  f"torchvision {tv['first']:.2f} s")
            print(f"  images/s per run: kdlens {[round(x, 1) for x in kd['rates']]}, torchvision "
                  f"{[round(x, 1) for x in tv['rates']]}")
            print(f"  memory runs (kdlens / torchvision): {kd['processes']} / {tv['processes']} processes, sampled "
                  f"every {kd['interval'] * 1e3:.0f} / {tv['interval'] * 1e3:.0f} ms; PSS after the imports "
                  f"{kd['start'] / MB:.0f} / {tv['start'] / MB:.0f} MB (anon {kd['start_anon'] / MB:.0f} / "
                  f"{tv['start_anon'] / MB:.0f}), peak above it {(kd['pss'] - kd['start']) / MB:.0f} / "
                  f"{(tv['pss'] - tv['start']) / MB:.0f} MB")
        lo, hi = sizes[0], sizes[-1]
        if lo != hi:
            for key, what in (("pss", "PSS"), ("anon", "anon PSS")):
                print(f"peak {what} from {lo} to {hi} images: kdlens "
                      f"{(results['kdlens', hi][key] - results['kdlens', lo][key]) / MB:+.1f} MB, torchvision "
                      f"{(results['torchvision', hi][key] - results['torchvision', lo][key]) / MB:+.1f} MB")
        speedup = results["kdlens", hi]["rate"] / results["torchvision", hi]["rate"]
        ratio = results["kdlens", hi]["pss"] / results["torchvision", hi]["pss"]
        print(f"goals (at {hi} images): speedup >= 1.0: {'met' if speedup >= 1.0 else 'NOT met'}; "
              f"rss_ratio <= 1.1: {'met' if ratio <= 1.1 else 'NOT met'}")
        print(f"speedup {speedup:.3f} rss_ratio {ratio:.3f}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
