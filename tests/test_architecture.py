"""The package layers and the DVC dependencies, read from the source.

1. Layers: each top-level package imports only packages below it (``LAYERS``, bottom first), never one
   above or beside it, and no project import sits inside a function (where it would hide a cycle).
2. Every stage's ``deps`` in dvc.yaml are the project files its entry module reaches through its imports
   (plus data): none missing, none it no longer reaches. A stage whose deps name ``methods/${method}.py``
   (distill; the sigma and report stages, whose ``load_model`` rebuilds a student's method parts) is
   checked once per method, since ``methods.registry`` imports only the selected method's module; its
   deps also name the helpers that only some methods import (``METHOD_SHARED``), which DVC's templating
   cannot add per method: each must be reached by at least one method.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

from tiny_profile import ROOT

LAYERS = ["core", "dataset", "models", "methods", "explain", "training", "stages", "protocols"]
# Method code that only some methods import: declared for every method by the stages that run one.
METHOD_SHARED = ["methods/cam.py", "methods/common.py", "methods/logits.py", "methods/letkd"]


def _sources() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def _module_file(module: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), None outside the project."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts[:-1]) if rel.name != "__init__" else ".".join(parts)


def _imports(path: Path) -> list[tuple[str, ast.stmt, bool]]:
    """(absolute module, node, at module level) for every import of ``path``; ``from X import a`` also
    yields ``X.a`` (a submodule when it is one)."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = _package_of(path).split(".")
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module
            out.append((base, node, id(node) in top))
            out += [(f"{base}.{a.name}", node, id(node) in top) for a in node.names]
    return out


def _files_of(module: str) -> list[Path]:
    """The files that importing ``module`` executes: each package __init__ on the way, then the module."""
    parts = module.split(".")
    found = [_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)]
    return [f for f in found if f is not None]


@cache
def closure(entry: str) -> frozenset[str]:
    """The project files (relative paths) reached from ``entry`` (a file path) through imports."""
    seen: set[Path] = set()
    todo = [ROOT / entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module, _, _ in _imports(path):
            if module.split(".")[0] in LAYERS:
                todo += _files_of(module)
    return frozenset(str(p.relative_to(ROOT)) for p in seen)


def test_packages_import_only_packages_below_them():
    bad = []
    for path in _sources():
        own = path.relative_to(ROOT).parts[0]
        for module, node, at_top in _imports(path):
            pkg = module.split(".")[0]
            if pkg not in LAYERS or (pkg == own and at_top):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
            if not at_top:
                bad.append(f"{where} inside a function")
            elif LAYERS.index(pkg) > LAYERS.index(own):
                bad.append(f"{where}, a layer above {own}")
    assert not bad, "\n".join(sorted(set(bad)))


def _expand(dep: str) -> set[str]:
    """A dvc.yaml dependency as the project source files it stands for (a folder: its .py files)."""
    path = ROOT / dep
    if path.is_dir():
        return {str(p.relative_to(ROOT)) for p in path.rglob("*.py")}
    return {dep} if dep.endswith(".py") else set()


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _method_names() -> list[str]:
    return sorted(p.stem for p in (ROOT / "methods").glob("*.py")
                  if p.stem not in {"__init__", "base", "registry", "common", "logits", "cam"})


def _entry(stage: dict) -> str:
    """stages/<name>.py of ``cmd: python -m stages.<name> ...``."""
    module = stage["cmd"].split("-m ", 1)[1].split()[0]
    return module.replace(".", "/") + ".py"


def _declared_code(stage: dict, **subst: str) -> set[str]:
    deps = set()
    for dep in stage.get("deps", []):
        for k, v in subst.items():
            dep = dep.replace("${" + k + "}", v)
        deps |= _expand(dep)
    return deps


def _cases():
    for name, stage in _stages().items():
        body = stage.get("do", stage)
        items = list(stage["foreach"]) if "foreach" in stage else [None]
        per_method = "${method}" in str(body.get("deps", [])) + str(stage.get("foreach", ""))
        for item in items:
            for m in _method_names() if per_method else [None]:
                label = name + (f"@{item}" if item else "") + (f"[{m}]" if m else "")
                yield pytest.param(body, item, m, stage.get("foreach", {}), id=label)


EVERY_METHOD = {"stages/check_params.py"}  # validates every method's section: imports every method module


def reached_by(body: dict, item: str | None, method: str | None) -> set[str]:
    """What the stage runs: its entry module's closure and, if it names the method, that method's (every
    method's for a stage that validates them all)."""
    reached = set(closure(_entry(body)))
    if _entry(body) in EVERY_METHOD:
        reached |= {f for m in _method_names() for f in closure(f"methods/{m}.py")}
    if method is not None and (item is None or item == "student"):  # load_model may rebuild its method parts
        reached |= closure(f"methods/{method}.py")
    return reached


def declared_by(body: dict, item: str | None, method: str | None, foreach) -> set[str]:
    subst = {"method": method or "ce", "key": item or ""}
    if isinstance(foreach, dict) and item is not None:
        subst.update({f"item.{k}": str(v).replace("${method}", method or "ce") for k, v in foreach[item].items()})
    return _declared_code(body, **subst)


@pytest.mark.parametrize("body, item, method, foreach", list(_cases()))
def test_stage_deps_are_the_code_it_runs(body, item, method, foreach):
    reached = reached_by(body, item, method)
    declared = declared_by(body, item, method, foreach)
    # The shared method code is declared for every item of the stage (a dependency cannot be templated
    # away for one item), also for one that runs no method (estimate_sigma@baseline).
    shared = {f for dep in METHOD_SHARED for f in _expand(dep)} if method is not None else set()
    missing = sorted(reached - declared)
    extra = sorted(declared - reached - shared)
    assert not missing, f"dvc.yaml does not declare code the stage runs: {missing}"
    assert not extra, f"dvc.yaml declares code the stage no longer reaches: {extra}"


def test_shared_method_code_is_reached_by_some_method():
    for dep in METHOD_SHARED:
        assert any(_expand(dep) & closure(f"methods/{m}.py") for m in _method_names()), dep


def test_prepare_data_reaches_no_model_or_method():
    reached = closure("stages/prepare_data.py")
    assert not [f for f in reached if f.split("/")[0] in ("models", "methods", "training", "explain")], reached


if __name__ == "__main__":  # print each stage's closure, to write dvc.yaml's deps from
    for n, st in _stages().items():
        st = st.get("do", st)
        print(n, sorted(closure(_entry(st))))
