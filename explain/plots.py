"""Matplotlib figures logged to MLflow and written next to the report (headless backend)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(histories: dict[str, list[dict]]):
    """Test top-1 and training loss per epoch, one line per network."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, history in histories.items():
        epochs = [r["epoch"] for r in history]
        ax_acc.plot(epochs, [r["test/top1"] for r in history], marker=".", label=name)
        ax_loss.plot(epochs, [r["train/loss"] for r in history], marker=".", label=name)
    ax_acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="accuracy")
    ax_loss.set(xlabel="epoch", ylabel="training loss (sum of terms)", title="loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
