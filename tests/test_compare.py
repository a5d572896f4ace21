"""explain.compare's verdicts on hand-built arms (the MLflow side is in tests/test_pipeline_students.py)."""
from explain.compare import Arm, ltb_verdicts, markdown, vam_verdicts


def _arm(method, entropy=None, vam=False, arch="ltb_w16", top1=80.0, params=1000, vam_params=0):
    ent = {f"level{i}": e for i, e in enumerate(entropy, start=1)} if entropy else {}
    return Arm(arch=arch, method=method, vam=vam, tree_from="own", test_top1=top1, params=params,
               vam_params=vam_params, run_id=f"run-{method}-{vam}", entropy=ent,
               groups=[["0", "1"], ["2"]] if entropy else [])


def test_kd_lower_entropy_than_ce_but_not_than_ls():
    arms = [_arm("ce", (0.6, 1.2, 1.5)), _arm("kd", (0.6, 1.0, 0.8)), _arm("ls", (0.5, 0.9, 0.7))]
    lines = ltb_verdicts(arms)
    assert len(lines) == 2
    assert "KD's mean gate entropy 0.800 vs CE's 1.100" in lines[0] and "**holds**" in lines[0]
    assert "vs LS's 0.700" in lines[1] and "**does not hold**" in lines[1]


def test_missing_arms_are_said_not_guessed():
    assert "no KD arm yet" in ltb_verdicts([_arm("ce", (0.6, 1.2, 1.5))])[0]
    lines = ltb_verdicts([_arm("kd", (0.6, 1.0, 0.8))])
    assert ["no CE arm" in lines[0], "no LS arm" in lines[1]] == [True, True]


def test_vam_is_compared_with_the_same_arch_and_method_without_it():
    arms = [_arm("kd", arch="resnet8", top1=90.0, params=78042),
            _arm("kd", arch="resnet8", vam=True, top1=90.5, params=78058, vam_params=16),
            _arm("ce", arch="resnet8", vam=True, top1=85.0, vam_params=16)]  # no plain ce run: no line
    (line,) = vam_verdicts(arms)
    assert "`resnet8` / `kd`: VAM +0.50 points (90.00% → 90.50%) for 16 extra parameters (0.021%" in line
    md = markdown(arms, "kdlens-scenes")
    assert "| resnet8 / kd + VAM | 90.50 |" in md and "| resnet8 / kd | 90.00 |" in md
