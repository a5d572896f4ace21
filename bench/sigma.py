"""Batched sigma estimation against the one-image-at-a-time loop (upstream's structure), same seeds.

Both estimate the sigma maps of the same N images on the same network with the same noise draws
(each image's noise comes from its own generator, seeded by (seed, image id)); the batched run does
one forward/backward per step for all images (in chunks of ``--max-samples`` samples), the reference
one per image per step with an ``nn.Parameter`` and ``torch.optim.SGD``. Reported: both wall times,
their ratio, and the largest absolute difference between the two runs' selected sigma maps.

    python bench/sigma.py [--arch resnet8] [--n 16] [--noise-batch 96] [--max-samples 128] [--threads 1]

The last line reads ``speedup <x> max_abs_diff <y>``.

On a CPU core the ratio stays near 1 at B = 96 (measured: resnet8, 16 images, 1.01x, max |diff| 6.5e-8):
the work is the same N*B*steps forward/backward passes either way, and a CPU convolution costs the same
per sample at batch 96 as at batch 1536. Batching removes per-image launch and Python overhead, which
dominates on a GPU (one image's 96 samples of a CIFAR net cannot fill it) or with small B on a CPU
(B = 8: 1.4x).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from dataset.scenes import build_scenes  # noqa: E402
from dataset.params import ScenesParams  # noqa: E402
from explain import sigma as S  # noqa: E402


def scene_images(n: int, size: int) -> torch.Tensor:
    """n test images of the embedded ``scenes`` dataset, normalised with their own statistics."""
    _, test, _, _ = build_scenes(ScenesParams(n_train=max(n, 10), n_test=max(n, 10), image_size=size))
    x = torch.from_numpy(test.images[:n]).float() / 255.0
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--tap", default="stages", help="stem|stages|preact|pooled|logits")
    ap.add_argument("--index", type=int, default=-1, help="which stage for stages/preact")
    ap.add_argument("--n", type=int, default=16, help="images")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--noise-batch", type=int, default=96)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--probe-step", type=int, default=60)
    ap.add_argument("--max-samples", type=int, default=S.SigmaParams.model_fields["max_samples"].default,
                    help="batched: samples per forward (0 = all at once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = models.create(args.arch, 10)
    fn = S.model_feature_fn(model, args.tap, args.index)
    x = scene_images(args.n, args.size)
    p = S.SigmaParams(grid=args.grid, noise_batch=args.noise_batch, steps=args.steps, probe_step=args.probe_step,
                      max_samples=args.max_samples or None)
    print(f"{args.arch} {args.tap}[{args.index}], {args.n} images {args.size}x{args.size}, grid {args.grid}, "
          f"B {args.noise_batch}, {args.steps} steps (probe {args.probe_step}), lambda_H {p.lambda_h}, lr {p.lr}, "
          f"{torch.get_num_threads()} thread(s), max_samples {p.max_samples}", flush=True)
    # warm-up (allocator, oneDNN primitives) on one image, untimed
    S.estimate_sigma(fn, x[:1], S.SigmaParams(**{**p.__dict__, "steps": 2, "probe_step": 1}), progress=False)

    t0 = time.perf_counter()
    batched = S.estimate_sigma(fn, x, p, seed=args.seed, progress=False)
    t_batched = time.perf_counter() - t0
    print(f"batched      {t_batched:8.2f} s  ({t_batched / args.n:.2f} s/image)", flush=True)
    t0 = time.perf_counter()
    ref = S.estimate_sigma_reference(fn, x, p, seed=args.seed, progress=False)
    t_ref = time.perf_counter() - t0
    print(f"one-by-one   {t_ref:8.2f} s  ({t_ref / args.n:.2f} s/image)", flush=True)

    both = batched.effective & ref.effective
    diff = (batched.sigma[both] - ref.sigma[both]).abs()
    max_abs = float(diff.max()) if len(diff) else float("nan")
    same_steps = bool(torch.equal(batched.selected_step, ref.selected_step))
    info = S.summary(batched)
    print(f"effective {int(both.sum())}/{args.n}, same selected steps: {same_steps}, "
          f"selected step mean {info['selected_step_mean']:.1f}, hit-target rate {info['hit_target_rate']:.2f}, "
          f"sigma range [{float(batched.sigma[both].min()):.4g}, {float(batched.sigma[both].max()):.4g}]")
    print(f"speedup {t_ref / t_batched:.2f} max_abs_diff {max_abs:.3g}")


if __name__ == "__main__":
    main()
