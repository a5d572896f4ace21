"""What the reference-layout networks share: the stem -> stages -> pool -> head forward."""


def staged_forward(stem, layers, pool, head):
    """(logits, maps) of the stem output run through ``layers`` in turn (each output is a stage map),
    the last map pooled by ``pool`` into the ``head``."""
    stages, out = [], stem
    for layer in layers:
        out = layer(out)
        stages.append(out)
    pooled = pool(out).flatten(1)
    return head(pooled), {"stem": stem, "stages": stages, "pooled": pooled}
