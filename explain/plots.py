"""Matplotlib figures logged to MLflow and written next to the report (headless backend)."""
from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(histories: dict[str, list[dict]]):
    """Test top-1 and training loss per epoch, one line per network (an imported teacher, never trained
    here, is one accuracy point at epoch 0 and no loss line)."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        ax_acc.plot([r["epoch"] for r in history], [r["test/top1"] for r in history], marker=".", label=name)
        trained = [r for r in history if "train/loss" in r]
        ax_loss.plot([r["epoch"] for r in trained], [r["train/loss"] for r in trained], marker=".", label=name)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (sum of terms)", title="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- sigma / knowledge figures ----------------------------------------------------------------------

ENTROPY_RANGE = (-4.5, -2.3)  # the colour range of the reference's entropy heat maps ('hot')


def _image_hwc(image):
    """uint8 [3, H, W] (or float in 0..1) -> float [H, W, 3] in 0..1 for imshow."""
    a = np.asarray(image)
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    return np.clip(a.transpose(1, 2, 0), 0.0, 1.0)


def _overlay(ax, image, grid_map, vmin, vmax, cmap, alpha):
    """The image (in grey) with a G x G map upsampled (nearest) to its size drawn over it."""
    img = _image_hwc(image).mean(axis=2)  # grey under the map, so the colours are the map's
    h, w = img.shape[:2]
    ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    im = ax.imshow(grid_map, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="nearest",
                   extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def sigma_heatmaps(images, maps, titles=None, kind: str = "entropy", vmin=None, vmax=None, alpha: float = 0.6,
                   masks=None, max_images: int = 8):
    """A few images, each shown alone and with its sigma or entropy map drawn over it.

    ``images`` uint8 [n, 3, H, W]; ``maps`` [n, G, G] (``kind``: "entropy" (default colour range
    [-4.5, -2.3], 'hot', low = the network uses the cell) or "sigma"); ``masks`` optional [n, G, G]
    foreground cells, outlined. Non-effective images (NaN maps) show the image only.
    """
    n = min(len(images), max_images)
    if kind == "entropy":
        vmin, vmax = (ENTROPY_RANGE[0] if vmin is None else vmin), (ENTROPY_RANGE[1] if vmax is None else vmax)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.8, 4.0), squeeze=False)
    im = None
    for j in range(n):
        axes[0, j].imshow(_image_hwc(images[j]), interpolation="nearest")
        axes[0, j].set_xticks([])
        axes[0, j].set_yticks([])
        if titles is not None:
            axes[0, j].set_title(str(titles[j]), fontsize=8)
        im = _overlay(axes[1, j], images[j], np.asarray(maps[j], dtype=np.float64), vmin, vmax, "hot", alpha)
        if masks is not None:
            _outline(axes[1, j], np.asarray(masks[j], dtype=bool), images[j].shape[-2:])
    axes[1, 0].set_ylabel(kind, fontsize=8)
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="H (nats)" if kind == "entropy" else "sigma")
    return fig


def _outline(ax, cells, size):
    """Draw the boundary of the True cells of a G x G mask over an image of ``size`` (H, W)."""
    g = cells.shape[0]
    h, w = size
    ch, cw = h / g, w / g
    for r in range(g):
        for c in range(g):
            if not cells[r, c]:
                continue
            for dr, dc, seg in ((-1, 0, ((c, c + 1), (r, r))), (1, 0, ((c, c + 1), (r + 1, r + 1))),
                                (0, -1, ((c, c), (r, r + 1))), (0, 1, ((c + 1, c + 1), (r, r + 1)))):
                rr, cc = r + dr, c + dc
                if 0 <= rr < g and 0 <= cc < g and cells[rr, cc]:
                    continue
                xs = [v * cw - 0.5 for v in seg[0]]
                ys = [v * ch - 0.5 for v in seg[1]]
                ax.plot(xs, ys, color="cyan", linewidth=0.8)


def sigma_over_epochs(images, entropy, epochs, title: str = "", vmin=None, vmax=None, alpha: float = 0.6,
                      max_images: int = 4):
    """Rows = images, columns = checkpoint epochs: entropy maps ([n, K, G, G]) over their images."""
    vmin = ENTROPY_RANGE[0] if vmin is None else vmin
    vmax = ENTROPY_RANGE[1] if vmax is None else vmax
    n, k = min(len(images), max_images), len(epochs)
    fig, axes = plt.subplots(n, k, figsize=(1.6 * k + 0.8, 1.6 * n + 0.5), squeeze=False)
    im = None
    for i in range(n):
        for j in range(k):
            im = _overlay(axes[i, j], images[i], np.asarray(entropy[i][j], dtype=np.float64), vmin, vmax, "hot",
                          alpha)
            if i == 0:
                axes[i, j].set_title(f"epoch {epochs[j]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="H (nats)")
    return fig


def concept_curves(runs: dict[str, dict]):
    """N_fg and N_bg (mean over images) vs checkpoint epoch, one line per network.

    ``runs``: name -> {"epochs": [K], "N_fg": [K], "N_bg": [K]} (e.g. ``run_metrics(...)["series"]`` plus
    its ``"epochs"``), and optionally "N_fg_interval": [K][low, high], drawn as a band.
    """
    fig, (ax_fg, ax_bg) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for name, r in runs.items():
        (line,) = ax_fg.plot(r["epochs"], r["N_fg"], marker=".", label=name)
        if "N_fg_interval" in r:
            low, high = np.asarray(r["N_fg_interval"], dtype=float).T
            ax_fg.fill_between(r["epochs"], low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax_bg.plot(r["epochs"], r["N_bg"], marker=".", label=name)
    ax_fg.set(xlabel="epoch", ylabel="visual concepts per image", title="foreground concepts N_fg")
    ax_bg.set(xlabel="epoch", title="background concepts N_bg")
    for ax in (ax_fg, ax_bg):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
