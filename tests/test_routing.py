"""Routing explanations of KDExplainer's LTB (Xue et al., IJCAI 2021) on hand-built preference matrices whose
answers are known."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import models
from explain import routing as R
from models.ltb import entropy_rows

# The hard tree of PREFS, chosen by hand:
E1 = [1, 0, 0, 1]  # level-2 expert c -> level-1 expert
E2 = [3, 3, 0, 2, 1, 0, 2, 2]  # level-3 expert c -> level-2 expert
E3 = [0, 1, 0, 5, 3, 7]  # class k -> level-3 expert
NAMES = ["cat", "dog", "fox", "car", "ship", "boat"]


def soft_rows(choices: list[int], parents: int, top: float = 0.6) -> np.ndarray:
    """Rows with ``top`` on the chosen parent and the rest spread evenly."""
    p = np.full((len(choices), parents), (1 - top) / (parents - 1))
    p[np.arange(len(choices)), choices] = top
    return p


PREFS = [soft_rows(E1, 2), soft_rows(E2, 4), soft_rows(E3, 8)]


def test_entropy_rows_known_values():
    assert entropy_rows(np.full((3, 8), 1 / 8)) == pytest.approx([math.log(8)] * 3)
    assert entropy_rows(np.eye(4)) == pytest.approx([0.0] * 4)  # 0 log 0 = 0, no NaN
    hand = [[0.5, 0.25, 0.25], [0.9, 0.1, 0.0]]
    want = [1.5 * math.log(2), -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))]  # 1.0397, 0.3251
    assert entropy_rows(hand) == pytest.approx(want)
    assert entropy_rows(torch.tensor(hand)) == pytest.approx(want, rel=1e-6)


def test_level_entropy_keys_and_means():
    prefs = [np.full((4, 2), 0.5), np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]],
             np.array([[0.5, 0.5] + [0.0] * 6, [1.0] + [0.0] * 7])]
    h = R.level_entropy(prefs)
    assert h["level1"] == pytest.approx(math.log(2))
    assert h["level2"] == pytest.approx(0.0)
    assert h["level3/node0"] == pytest.approx(math.log(2)) and h["level3/node1"] == pytest.approx(0.0)
    assert h["level3"] == pytest.approx(math.log(2) / 2)
    assert set(h) == {f"level{l}" for l in (1, 2, 3)} | {f"level1/node{c}" for c in range(4)} \
        | {f"level2/node{c}" for c in range(8)} | {f"level3/node{c}" for c in range(2)}


def test_class_paths_and_groups():
    paths = R.class_paths(PREFS)
    assert paths == [(1, 3, 0), (1, 3, 1), (1, 3, 0), (1, 0, 5), (0, 2, 3), (0, 2, 7)]
    assert R.class_groups(paths, 1) == [[0, 1, 2, 3], [4, 5]]
    assert R.class_groups(paths, 2) == [[0, 1, 2], [3], [4, 5]]
    assert R.class_groups(paths, 3) == [[0, 2], [1], [3], [4], [5]]
    with pytest.raises(ValueError):
        R.class_groups(paths, 4)


def test_hard_tree_of_hand_built_preferences():
    tree = R.hard_tree(PREFS)
    assert tree.edges == [E1, E2, E3]
    assert tree.used == [[True, True], [True, False, True, True],
                         [True, True, False, True, False, True, False, True]]
    assert tree.leaves(1, 1) == [0, 1, 2, 3] and tree.leaves(1, 0) == [4, 5]
    assert tree.leaves(2, 3) == [0, 1, 2] and tree.leaves(2, 1) == []
    assert tree.leaves(3, 0) == [0, 2]
    assert tree.covers_all_classes


@pytest.mark.parametrize("num_classes", [10, 100])
def test_hard_tree_of_a_model_covers_every_class(num_classes):
    torch.manual_seed(num_classes)
    model = models.create("ltb_w16", num_classes)
    prefs = model.preferences()
    tree = R.hard_tree(prefs)
    assert tree.covers_all_classes
    assert tree.reachable_classes() == list(range(num_classes))
    for k, (p1, p2, p3) in enumerate(R.class_paths(prefs)):  # paths agree with walking the tree
        assert k in tree.leaves(3, p3) and k in tree.leaves(2, p2) and k in tree.leaves(1, p1)
        assert tree.used[0][p1] and tree.used[1][p2] and tree.used[2][p3]


def test_routing_summary_is_json_and_named():
    s = R.routing_summary([torch.tensor(p) for p in PREFS], NAMES)
    assert json.loads(json.dumps(s)) == s
    assert s["groups"]["level1"] == [["cat", "dog", "fox", "car"], ["ship", "boat"]]
    assert s["groups"]["level3"][0] == ["cat", "fox"]
    assert s["class_paths"][3] == {"index": 3, "class": "car", "path": [1, 0, 5]}
    assert np.allclose(s["preferences"]["level2"], PREFS[1])
    assert s["entropy"] == pytest.approx(R.level_entropy(PREFS))
    assert s["tree"]["used_experts"]["level2"] == [True, False, True, True]
    with pytest.raises(ValueError):
        R.routing_summary(PREFS, NAMES[:-1])


def test_plots_are_figures():
    import matplotlib.pyplot as plt

    fig = R.plot_routing(PREFS, NAMES, "hand")
    assert isinstance(fig, Figure)
    assert [t.get_text() for t in fig.axes[2].get_yticklabels()] == NAMES
    plt.close(fig)

    fig = R.plot_tree(PREFS, NAMES, "hand")
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert set(NAMES) <= texts and "input" in texts
    plt.close(fig)

    records = [{"epoch": e, **{f"routing/entropy/level{l}": 1 / e for l in (1, 2, 3)}} for e in (1, 2, 3)]
    fig = R.plot_entropy_curves({"ce": records, "kd": records[:2]})
    assert len(fig.axes) == 3
    assert [len(line.get_xdata()) for line in fig.axes[0].get_lines()] == [3, 2, 2]  # 2 arms + uniform
    plt.close(fig)
