import pytest
import yaml

import methods
from tiny_profile import ROOT, tiny_params
from core.errors import KdlensError
from core.schema import flatten, params_hash
from stages.params import Params, load_params, parse_params
from training.fitter import check_pair


def test_project_params_validate():
    p = load_params(ROOT / "params.yaml")
    assert p.data.name == "scenes"
    assert p.method_params("kd").T == 4.0


@pytest.mark.parametrize("patch, expected", [
    (lambda p: p.update(method="nope"), "method: unknown method 'nope'; choose one of: " + ", ".join(methods.names())),
    (lambda p: p["data"].update(name="mnist"), "data.name"),
    (lambda p: p["teacher"].update(arch="resnet9000"), "teacher.arch: unknown model 'resnet9000'; choose one of: "),
    (lambda p: p["student"]["train"].update(epochs=-3), "student.train.epochs"),
    (lambda p: p["student"]["train"].update(epochz=3), "student.train.epochz: unknown key"),
    (lambda p: p["methods"]["kd"].update(T=-1), "methods.kd.T: Input should be greater than 0"),
    (lambda p: p["methods"].update(foo={}), "methods.foo: unknown key"),
    (lambda p: p["student"]["train"].update(keep_epochs=[99]), "keep_epochs"),
    (lambda p: p["student"].pop("train") and p["student"].update(train="x"), "student.train"),
    (lambda p: p.update(seed=-1), "seed: Input should be greater than or equal to 0"),
    (lambda p: p["teacher"].update(seed=2**40), "teacher.seed: Input should be less than or equal to 2147483647"),
    (lambda p: p["sigma"].update(seed=-5), "sigma.seed: Input should be greater than or equal to 0"),
    (lambda p: p.update(sed=5), "sed: unknown key"),
])
def test_bad_params_give_one_line_naming_the_key(patch, expected):
    raw = tiny_params()
    patch(raw)
    with pytest.raises(KdlensError) as e:
        parse_params(raw)
    msg = str(e.value)
    assert "\n" not in msg
    assert expected in msg, msg
    assert msg.startswith("params.yaml: ")


def test_negative_epoch_message_says_what_is_valid():
    raw = tiny_params()
    raw["teacher"]["train"]["epochs"] = -1
    with pytest.raises(KdlensError, match=r"teacher\.train\.epochs: Input should be greater than or equal to 1"):
        parse_params(raw)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(KdlensError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(KdlensError, match="not found"):
        load_params(tmp_path / "absent.yaml")
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(KdlensError, match="must be a mapping"):
        load_params(bad)


def test_flatten_and_hash_are_stable():
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}
    assert params_hash({"x": 1, "y": 2}) == params_hash({"y": 2, "x": 1})
    assert params_hash({"x": 1}) != params_hash({"x": 2})


def _leaves(node, path=()):
    """(dotted key, value, line) of every scalar or list in a composed YAML mapping."""
    for key, value in node.value:
        here = (*path, key.value)
        if isinstance(value, yaml.MappingNode):
            yield from _leaves(value, here)
        else:
            yield ".".join(here), yaml.safe_load(yaml.serialize(value)), key.start_mark.line


def test_params_yaml_differs_from_the_schema_only_where_it_says_why():
    """params.yaml holds the default profile: a value that is not its schema's default is the profile's
    own choice, and the line that sets it says why in a comment; anything else is a silent disagreement."""
    text = (ROOT / "params.yaml").read_text()
    lines = text.splitlines()
    defaults = Params().model_dump()
    defaults["methods"] = {name: methods.params_class(name)().model_dump() for name in methods.names()}
    silent = []
    for key, value, line in _leaves(yaml.compose(text)):
        default = defaults
        for part in key.split("."):
            default = default[part]
        default = list(default) if isinstance(default, tuple) else default
        if value != default and "#" not in lines[line]:
            silent.append(f"{key}: params.yaml {value!r}, schema {default!r}")
    assert not silent, "\n".join(silent)


def test_the_method_is_checked_against_the_pair_from_the_params_alone():
    """What stage check_params runs before any work: kdsvd cannot pair unequal channel counts."""
    kdsvd = methods.params_class("kdsvd")()
    with pytest.raises(KdlensError, match=r"method 'kdsvd' with student CifarResNet: kdsvd aligns .* equal channel"):
        check_pair("kdsvd", kdsvd, "resnet8", "resnet8x4", 10, 32, None)
    check_pair("kdsvd", kdsvd, "resnet8x4", "resnet32x4", 10, 32, None)  # equal channels: served
    check_pair("letkd2", methods.params_class("letkd2")(), "resnet8", "resnet8x4", 10, 32, None)  # at distill
