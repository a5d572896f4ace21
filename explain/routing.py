"""Routing explanations for the LTB tree student of KDExplainer (Xue et al., "KDExplainer: A Task-oriented Attention
Model for Explaining Knowledge Distillation", IJCAI 2021).

Every function is pure. It takes the three preference matrices pi_1 [4, 2], pi_2 [8, 4], pi_3 [K, 8]
(``LTB.preferences()``, as torch tensors or array-likes) and returns plain data or a matplotlib figure.
Rows are children and columns are parents:

* row c of pi_1 is level-2 expert c choosing among the 2 level-1 experts;
* row c of pi_2 is level-3 expert c choosing among the 4 level-2 experts;
* row k of pi_3 is class k's head choosing among the 8 level-3 experts.

The hard tree is the argmax of every row, the routing that stage 2 (``LTB.freeze_structure()``) trains.
The entropy helpers live in ``models.ltb``, so the model's per-epoch diagnostics and these reports share
one implementation.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import numpy as np

from models.ltb import level_entropy

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _arrays(prefs) -> list[np.ndarray]:
    out = []
    for p in prefs:
        if hasattr(p, "detach"):
            p = p.detach().cpu().numpy()
        out.append(np.asarray(p, dtype=np.float64))
    if len(out) != 3:
        raise ValueError(f"expected the 3 LTB preference matrices, got {len(out)}")
    return out


def _choices(prefs) -> list[list[int]]:
    """The argmax parent of every child row, per level (the first maximum on ties, as torch.argmax)."""
    return [[int(i) for i in p.argmax(axis=1)] for p in _arrays(prefs)]


def class_paths(prefs) -> list[tuple[int, int, int]]:
    """Per class k, the experts (p1, p2, p3) its hard path passes through.

    p3 = argmax pi_3[k], p2 = argmax pi_2[p3], p1 = argmax pi_1[p2].
    """
    c1, c2, c3 = _choices(prefs)
    return [(c1[c2[p3]], c2[p3], p3) for p3 in c3]


def class_groups(paths: list[tuple[int, int, int]], level: int) -> list[list[int]]:
    """The classes that share an expert at ``level`` (1, 2 or 3), i.e. the same path prefix.

    Each group is sorted, groups are ordered by their first class, and singletons are included.
    """
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 1, 2 or 3, got {level}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, path in enumerate(paths):
        groups.setdefault(tuple(path[:level]), []).append(k)
    return sorted(groups.values(), key=lambda g: g[0])


@dataclass
class HardTree:
    """The argmax tree: input -> 2 level-1 experts -> 4 level-2 -> 8 level-3 -> K class leaves.

    ``edges[l][c]`` is the parent that child c of routing level l+1 chose: ``edges[0]`` maps the level-2
    experts onto level-1 experts, ``edges[1]`` maps level-3 experts onto level-2 experts, and ``edges[2]``
    maps classes onto level-3 experts. ``used[l][e]`` says whether some class's path passes through
    expert e of level l+1.
    """

    edges: list[list[int]]
    used: list[list[bool]]

    @property
    def num_classes(self) -> int:
        return len(self.edges[2])

    def children(self, level: int, expert: int) -> list[int]:
        """The children of expert ``expert`` at ``level`` (1-3): experts of the next level, or classes."""
        return [c for c, p in enumerate(self.edges[level - 1]) if p == expert]

    def leaves(self, level: int, expert: int) -> list[int]:
        """The classes below expert ``expert`` at ``level``."""
        if level == 3:
            return self.children(3, expert)
        return sorted(k for c in self.children(level, expert) for k in self.leaves(level + 1, c))

    def reachable_classes(self) -> list[int]:
        """Every class leaf reached from the input by walking down the tree, with repeats kept."""
        return sorted(k for e in range(len(self.used[0])) for k in self.leaves(1, e))

    @property
    def covers_all_classes(self) -> bool:
        """Each class is exactly one leaf below the input."""
        return self.reachable_classes() == list(range(self.num_classes))


def hard_tree(prefs) -> HardTree:
    """The hard tree of the preferences, with the experts that some class's path uses."""
    edges = _choices(prefs)
    arrays = _arrays(prefs)
    used3 = [False] * arrays[2].shape[1]
    for p3 in edges[2]:
        used3[p3] = True
    used2 = [False] * arrays[1].shape[1]
    for c, p2 in enumerate(edges[1]):
        used2[p2] |= used3[c]
    used1 = [False] * arrays[0].shape[1]
    for c, p1 in enumerate(edges[0]):
        used1[p1] |= used2[c]
    return HardTree(edges=edges, used=[used1, used2, used3])


def routing_summary(prefs, class_names: list[str]) -> dict:
    """JSON-able report: preference matrices, class paths, groups per level (by name), tree, entropies."""
    arrays = _arrays(prefs)
    if len(class_names) != arrays[2].shape[0]:
        raise ValueError(f"{len(class_names)} class names for {arrays[2].shape[0]} classes")
    paths = class_paths(arrays)
    tree = hard_tree(arrays)
    return {
        "num_classes": len(class_names),
        "preferences": {f"level{l}": p.tolist() for l, p in enumerate(arrays, start=1)},
        "class_paths": [{"index": k, "class": class_names[k], "path": list(path)} for k, path in enumerate(paths)],
        "groups": {f"level{l}": [[class_names[k] for k in g] for g in class_groups(paths, l)] for l in (1, 2, 3)},
        "tree": {"edges": {f"level{l}": e for l, e in enumerate(tree.edges, start=1)},
                 "used_experts": {f"level{l}": u for l, u in enumerate(tree.used, start=1)}},
        "entropy": level_entropy(arrays),
    }


# --- figures ---------------------------------------------------------------------------------------

_ANNOTATE_MAX_CELLS = 200  # annotate heat-map cells with their value up to this many cells


def _heatmap(ax, p: np.ndarray, title: str, row_labels: list[str], row_label: str, col_label: str):
    """Rows are children, columns parents; expert "l.e" is expert e of level l, as in ``plot_tree``."""
    im = ax.imshow(p, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(p.shape[1]))
    ax.set_yticks(range(p.shape[0]))
    ax.set_yticklabels(row_labels, fontsize=7 if p.shape[0] <= 20 else 5)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(col_label, fontsize=8)
    ax.set_ylabel(row_label, fontsize=8)
    if p.size <= _ANNOTATE_MAX_CELLS:
        for (r, c), v in np.ndenumerate(p):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    return im


def plot_routing(prefs, class_names: list[str], title: str = ""):
    """One heat map per routing level (child rows x parent columns); level 3's rows are the classes."""
    p1, p2, p3 = _arrays(prefs)
    fig = plt.figure(figsize=(9.0, max(4.5, 0.2 * p3.shape[0] + 1.5)), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.6))
    _heatmap(fig.add_subplot(grid[0, 0]), p1, "level 1: pi_1", [f"2.{c}" for c in range(p1.shape[0])],
             "level-2 expert", "level-1 expert")
    _heatmap(fig.add_subplot(grid[1, 0]), p2, "level 2: pi_2", [f"3.{c}" for c in range(p2.shape[0])],
             "level-3 expert", "level-2 expert")
    im = _heatmap(fig.add_subplot(grid[:, 1]), p3, "level 3: pi_3", list(class_names), "class head", "level-3 expert")
    fig.colorbar(im, ax=fig.axes, shrink=0.6, label="preference pi (rows sum to 1)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_tree(prefs, class_names: list[str], title: str = ""):
    """The hard tree: input -> level-1 -> level-2 -> level-3 experts -> class leaves. Unused experts grey."""
    tree = hard_tree(prefs)
    k = tree.num_classes
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    # Depth-first layout: each leaf (a class, or an expert without children) takes the next x slot and
    # an inner node sits at the mean of its children, so edges never cross.
    xs: dict[tuple[int, int], float] = {}
    slot = [0]

    def place(level: int, node: int) -> float:
        kids = tree.children(level, node) if level >= 1 else list(range(len(tree.used[0])))
        if level == 3:
            for c in kids:
                xs[(4, c)] = float(slot[0])
                slot[0] += 1
            x = float(np.mean([xs[(4, c)] for c in kids])) if kids else _next()
        elif kids:
            x = float(np.mean([place(level + 1, c) for c in kids]))
        else:
            x = _next()
        xs[(level, node)] = x
        return x

    def _next() -> float:
        slot[0] += 1
        return float(slot[0] - 1)

    place(0, 0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * slot[0] + 1.0), 5.5))
    depth_y = {0: 4.0, 1: 3.0, 2: 2.0, 3: 1.0, 4: 0.0}
    for level in (1, 2, 3):
        for node, used in enumerate(tree.used[level - 1]):
            parent = (level - 1, tree.edges[level - 2][node]) if level >= 2 else (0, 0)
            colour = "black" if used else "lightgrey"
            ax.plot([xs[parent], xs[(level, node)]], [depth_y[parent[0]], depth_y[level]], color=colour, lw=1,
                    zorder=1)
            ax.scatter([xs[(level, node)]], [depth_y[level]], s=220, color="tab:blue" if used else "lightgrey",
                       edgecolors="black" if used else "grey", zorder=2)
            ax.text(xs[(level, node)], depth_y[level], f"{level}.{node}", ha="center", va="center", fontsize=6,
                    color="white" if used else "grey", zorder=3)
    for c, parent in enumerate(tree.edges[2]):
        ax.plot([xs[(3, parent)], xs[(4, c)]], [depth_y[3], depth_y[4]], color="black", lw=0.8, zorder=1)
        ax.text(xs[(4, c)], depth_y[4] - 0.08, class_names[c], ha="center", va="top", rotation=90,
                fontsize=7 if k <= 20 else 5)
    ax.scatter([xs[(0, 0)]], [depth_y[0]], s=260, marker="s", color="black", zorder=2)
    ax.text(xs[(0, 0)], depth_y[0] + 0.18, "input", ha="center", va="bottom", fontsize=8)
    ax.set_yticks([1.0, 2.0, 3.0], ["level 3", "level 2", "level 1"], fontsize=8)
    ax.set_xticks([])
    ax.set_ylim(-1.3 if k <= 20 else -1.9, 4.6)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_entropy_curves(curves: dict[str, list[dict]]):
    """Mean gate entropy (reference temperature t = 1) per level vs epoch, one line per arm.

    ``curves``: arm name -> the trainer's epoch records (``epoch`` and ``routing/entropy/level{l}``).
    Dashed: the entropy of a uniform row, log(number of parents).
    """
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for level, (ax, parents) in enumerate(zip(axes, (2, 4, 8)), start=1):
        key = f"routing/entropy/level{level}"
        for name, records in curves.items():
            rows = [r for r in records if key in r]
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker=".", label=name)
        ax.axhline(np.log(parents), color="grey", ls="--", lw=0.8, label="uniform")
        ax.set(xlabel="epoch", ylabel="H (nats)" if level == 1 else None, title=f"level {level}",
               ylim=(0.0, np.log(parents) * 1.05))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
