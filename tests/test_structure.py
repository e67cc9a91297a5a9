"""The package's shape: no import cycle among its modules; models/ knows no data, training or evaluation code.

Imports are read from the source (ast), at any depth inside functions too: a lazy import still ties two modules
together, and a cycle made of lazy imports is one refactor away from an ImportError at start-up.
"""
from __future__ import annotations

import ast
import sys

from conftest import REPO

PKG = REPO / "src" / "resnet_repro"


def module_name(path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path, modules: set[str]) -> set[str]:
    """The package modules `path` imports (relative or absolute, `from . import x` included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {t for t in [target, *(f"{target}.{a.name}" for a in node.names)] if t in modules}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    found.discard(name)
    found.discard("resnet_repro")  # the package's __init__ (its version string) imports nothing back
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {name: imports(path, set(files)) for name, path in files.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_package_modules():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_models_import_only_torch_and_the_standard_library():
    allowed = {"torch", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted((PKG / "models").glob("*.py")):
        tops = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # another module of models/; `..` would reach data, training or evaluation code
                tops.add("." * node.level + (node.module or "") if node.level else node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
        assert tops <= allowed, (path.name, tops - allowed)


def test_nothing_edits_the_import_path():
    """The package, its tests and tools/ import the installed package: no file puts a folder on sys.path (by hand
    or pytest's syspath_prepend) and no launcher sets PYTHONPATH."""
    edits = []
    for path in sorted(p for d in ("src", "tests", "tools") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys") or (isinstance(node, ast.Attribute) and node.attr == "syspath_prepend"):
                edits.append(f"{path.relative_to(REPO)}:{node.lineno}")
    edits += [str(p.relative_to(REPO)) for p in sorted(REPO.glob("tools/*.sh")) if "PYTHONPATH" in p.read_text()]
    assert edits == [], edits


def function_lengths():
    """(module path, qualified name, lines) of every function in src/, nested ones included."""
    out = []
    for path in sorted(PKG.rglob("*.py")):
        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = prefix + child.name
                    out.append((path.relative_to(PKG).as_posix(), name, child.end_lineno - child.lineno + 1))
                    walk(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    walk(child, prefix + child.name + ".")
        walk(ast.parse(path.read_text()), "")
    return out


def test_no_function_in_src_is_over_120_lines():
    """Issue 13's bar: a function a newcomer must hold in their head at once stays under a screenful or two."""
    long = [f"{p}:{name} ({n} lines)" for p, name, n in function_lengths() if n > 120]
    assert long == [], long


def test_train_reads_as_a_short_script():
    lengths = {(p, name): n for p, name, n in function_lengths()}
    assert lengths[("train.py", "train")] + lengths[("train.py", "_train")] <= 150


def test_the_length_walk_sees_nested_and_method_bodies():
    names = {name for p, name, n in function_lengths() if p == "stopping.py"}
    assert "RankMeeting.__call__" in names
