"""Training health: what the trainer's epoch records (training/trainer.py) say of a training going wrong.

Each flag is one line naming the epochs and the likely fix, written to the stage's ``metrics/<role>.json``
(``health``), printed at the end of the stage and shown at the top of the report:

* **dominant term**: a loss term sends more than ``DOMINANT_RATIO`` times the gradient the labels'
  cross-entropy sends at weight 1 (``gradnorm/<term>`` against ``gradnorm/ce`` / ``ce_weight``, the
  gradient norm each term alone sends into the student on an epoch's first batch) for
  ``DOMINANT_EPOCHS`` epochs in a row *while the labels are still being learned* (their training CE
  above ``FITTING_FRACTION`` of chance, ln(classes)). Once the labels are fit, their gradient shrinks and
  any distillation term's ratio grows: dkd's β = 8 term passes 10x late in a 20-epoch schedule in which
  it gains +5 points, which is its design, not a fault. Hinton et al. (NIPS 2014 workshop, Sec. 2) scale the soft-target
  term by T² so that it stays comparable to the hard-target one; a term ten times larger decides the
  training alone, and the labels are drowned out. Against the *weighted* CE term, a method that
  deliberately down-weights the labels (kd's ce_weight 0.1) would be flagged for its design.
* **near chance**: the training top-1 is still at most ``CHANCE_FACTOR`` times chance (100 / classes)
  for ``CHANCE_EPOCHS`` epochs in a row from epoch ``CHANCE_FROM`` on: the network is not fitting its
  own training data. One such epoch is not flagged: on the default profile every student, the CE
  baseline's included, spends epochs 1–3 at 10–17%, so epoch 3 alone at 14% is a slow start, not a
  failure (rkd at the papers' weights stays there for ten epochs).
* **slow fit**: at the middle epoch of the schedule the labels' training cross-entropy (``train/ce`` /
  ``ce_weight``) is still above ``SLOW_FRACTION`` of chance level, ln(classes): the method's terms hold
  the labels' fit back (rkd with the papers' weights on a 10-class profile: 1.96 of 2.30 at epoch 10 of
  20, where the CE baseline's is 0.66).
* **unstable loss**: an epoch's training loss more than ``RISE_FACTOR`` times the lowest one before it:
  a diverging loss, the step before a non-finite one (which stops the training).
"""
from __future__ import annotations

import math

TASK_TERM = "ce"  # the term that carries the labels (methods.base.cross_entropy_term)
DOMINANT_RATIO = 10.0
DOMINANT_EPOCHS = 3
CHANCE_FACTOR = 1.5
CHANCE_FROM = 3
CHANCE_EPOCHS = 2
RISE_FACTOR = 3.0
SLOW_FRACTION = 0.75
FITTING_FRACTION = 0.5


def _runs(epochs: list[int]) -> list[tuple[int, int]]:
    """Consecutive epochs as (first, last) stretches: [1, 2, 3, 7] -> [(1, 3), (7, 7)]."""
    out: list[tuple[int, int]] = []
    for e in epochs:
        if out and e == out[-1][1] + 1:
            out[-1] = (out[-1][0], e)
        else:
            out.append((e, e))
    return out


def _span(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def dominant_terms(history: list[dict], num_classes: int, section: str, ce_weight: float) -> list[dict]:
    if ce_weight <= 0:  # no labels' term to compare with
        return []
    fitting = FITTING_FRACTION * math.log(max(num_classes, 2))

    def still_fitting(r: dict) -> bool:  # records without the CE term (older ones) count as fitting
        return r.get(f"train/{TASK_TERM}", math.inf) / ce_weight > fitting

    flags = []
    terms = sorted({k.removeprefix("gradnorm/") for r in history for k in r if k.startswith("gradnorm/")})
    for term in terms:
        if term == TASK_TERM:
            continue
        ratios = {r["epoch"]: r[f"gradnorm/{term}"] * ce_weight / r[f"gradnorm/{TASK_TERM}"] for r in history
                  if r.get(f"gradnorm/{TASK_TERM}", 0) > 0 and f"gradnorm/{term}" in r and still_fitting(r)}
        over = [e for e, ratio in ratios.items() if ratio > DOMINANT_RATIO]
        for first, last in _runs(over):
            if last - first + 1 >= DOMINANT_EPOCHS:
                peak = max(ratios[e] for e in range(first, last + 1))
                flags.append({"kind": "dominant_term", "term": term, "epochs": [first, last], "message":
                              f"term {term!r} sends up to {peak:.0f}x the gradient of the labels' cross-entropy (at weight 1) in "
                              f"{_span(first, last)}; lower its weight in {section} (or warm it up over more "
                              "epochs)"})
    return flags


def near_chance(history: list[dict], num_classes: int) -> list[dict]:
    chance = 100.0 / num_classes
    low = [r["epoch"] for r in history if r["epoch"] >= CHANCE_FROM and r["train/top1"] <= CHANCE_FACTOR * chance]
    return [{"kind": "near_chance", "epochs": [first, last], "message":
             f"training top-1 stays near chance ({chance:.1f}% for {num_classes} classes) in {_span(first, last)}; "
             "lower the learning rate or the method's loss weights, and check the labels"}
            for first, last in _runs(low) if last - first + 1 >= CHANCE_EPOCHS]


def slow_fit(history: list[dict], num_classes: int, section: str, ce_weight: float) -> list[dict]:
    if ce_weight <= 0 or not history or num_classes < 2:
        return []
    middle = history[(len(history) - 1) // 2]
    if middle["epoch"] < CHANCE_FROM or f"train/{TASK_TERM}" not in middle:
        return []
    ce, chance = middle[f"train/{TASK_TERM}"] / ce_weight, math.log(num_classes)
    if ce <= SLOW_FRACTION * chance:
        return []
    return [{"kind": "slow_fit", "epochs": [middle["epoch"], middle["epoch"]], "message":
             f"the labels' training cross-entropy is still {ce:.2f} (chance {chance:.2f}) at epoch {middle['epoch']} "
             f"of {history[-1]['epoch']}: the method's terms hold the fit back; lower their weights in {section}"}]


def unstable_loss(history: list[dict]) -> list[dict]:
    risen, lowest = [], float("inf")
    for r in history:
        if r["train/loss"] > RISE_FACTOR * lowest:
            risen.append(r["epoch"])
        lowest = min(lowest, r["train/loss"])
    return [{"kind": "unstable_loss", "epochs": [first, last], "message":
             f"the training loss rose above {RISE_FACTOR:g}x its lowest value in {_span(first, last)}; "
             "lower the learning rate"} for first, last in _runs(risen)]


def health(history: list[dict], num_classes: int, section: str, ce_weight: float = 1.0) -> list[dict]:
    """Every flag of one training's epoch records (``section``: where its method's weights are set,
    e.g. ``methods.rkd``; ``ce_weight``: its labels' term weight); an empty list is a healthy training."""
    return dominant_terms(history, num_classes, section, ce_weight) + near_chance(history, num_classes) + \
        slow_fit(history, num_classes, section, ce_weight) + unstable_loss(history)
