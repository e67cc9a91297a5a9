"""The package's shape: no import cycle among its modules; models/ knows no data, training or evaluation code;
no module over 400 lines; no file edits sys.path; the config layer imports nothing that reads the hardware.

Imports are read from the source (ast), at any depth inside functions too: a lazy import still ties two modules
together, and a cycle made of lazy imports is one refactor away from an ImportError at start-up.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert lengths[("training/loop.py", "train")] + lengths[("training/loop.py", "_train")] <= 150


def test_the_length_walk_sees_nested_and_method_bodies():
    names = {name for p, name, n in function_lengths() if p == "stopping.py"}
    assert "RankMeeting.__call__" in names


# --- Issue 22: a module holds one idea; the installed package is imported, never a path; config reads no machine ---

MAX_MODULE_LINES = 400


def long_modules(root=PKG, limit: int = MAX_MODULE_LINES) -> list[str]:
    """The modules under `root` over `limit` lines, as 'path (N lines)'."""
    counts = {p.relative_to(root).as_posix(): len(p.read_text().splitlines()) for p in sorted(root.rglob("*.py"))}
    return [f"{p} ({n} lines)" for p, n in counts.items() if n > limit]


def test_no_module_in_src_is_over_400_lines():
    """Past 400 lines a module holds several ideas: split it by idea (and move, not rewrite, the code)."""
    long = long_modules()
    assert long == [], f"modules over {MAX_MODULE_LINES} lines: {', '.join(long)}"


def test_the_module_length_check_finds_a_long_module(tmp_path):
    (tmp_path / "short.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert long_modules(tmp_path) == ["sub/long.py (401 lines)"]


def project_files(root=REPO) -> list:
    """Every .py file of the project (src/, tests/, the tools, setup.py), not those of a virtual environment, of
    build output, of a hidden folder or of the data and runs folders (.gitignore's /data/ and runs/)."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not (d.startswith(".") or d in ("build", "dist", "__pycache__", "runs")
                                                 or d.endswith(".egg-info") or (here == root and d == "data")
                                                 or (here / d / "pyvenv.cfg").exists()))
        found += [here / f for f in sorted(files) if f.endswith(".py")]
    return found


def _is_sys_path(node) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
            and node.value.id == "sys")


def sys_path_edits(path) -> list[int]:
    """The lines of `path` that change sys.path: one of its list methods called, it or an item of it assigned,
    deleted or added to (`+=`), site.addsitedir, or pytest's syspath_prepend."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                (_is_sys_path(node.func.value) and node.func.attr in ("insert", "append", "extend", "remove", "pop",
                                                                      "clear", "reverse", "sort"))
                or node.func.attr in ("addsitedir", "syspath_prepend")):  # pytest's monkeypatch.syspath_prepend
            lines.append(node.lineno)
        targets = (node.targets if isinstance(node, (ast.Assign, ast.Delete))
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        if any(_is_sys_path(t) or (isinstance(t, ast.Subscript) and _is_sys_path(t.value)) for t in targets):
            lines.append(node.lineno)
    return sorted(lines)


def test_no_file_in_the_project_edits_sys_path():
    """Tools and tests import the installed package (pip install -e .), so what they run is what users run; a
    path put on sys.path by hand runs whatever lies there instead, and breaks when the file moves."""
    edits = [f"{p.relative_to(REPO).as_posix()}:{n}" for p in project_files() for n in sys_path_edits(p)]
    edits += [p.relative_to(REPO).as_posix() for p in sorted(REPO.glob("tools/*.sh")) if "PYTHONPATH" in p.read_text()]
    assert edits == [], f"sys.path edited at {', '.join(edits)}: import the installed package instead"


def test_the_sys_path_check_finds_each_kind_of_edit(tmp_path):
    edits = ["sys.path.insert(0, 'src')", "sys.path.append('src')", "sys.path.extend(['src'])", "sys.path = ['src']",
             "sys.path[0] = 'src'", "sys.path[:0] = ['src']", "sys.path += ['src']", "del sys.path[0]",
             "site.addsitedir('src')", "monkeypatch.syspath_prepend('src')"]
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "launcher.py").write_text("import site\nimport sys\n" + "\n".join(edits) + "\n")
    reads = "import sys\nprint(sys.path)\nfirst = sys.path[0]\nfound = 'src' in sys.path\npath = list(sys.path)\n"
    (tmp_path / "reader.py").write_text(reads)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "site.py").write_text("import sys\nsys.path.insert(0, 'x')\n")
    assert [p.relative_to(tmp_path).as_posix() for p in project_files(tmp_path)] == ["reader.py", "tools/launcher.py"]
    assert sys_path_edits(tmp_path / "tools" / "launcher.py") == list(range(3, 3 + len(edits)))
    assert sys_path_edits(tmp_path / "reader.py") == []


def hardware_readers(modules) -> list[str]:
    """The modules among `modules` that read the machine: runtime.py, and data's `cores` (where to run the loader
    workers), matched by its last name wherever under resnet_repro.data it lives."""
    return sorted(m for m in modules if m == "resnet_repro.runtime"
                  or (m.startswith("resnet_repro.data.") and m.rsplit(".", 1)[1] == "cores"))


def modules_after(code: str, *path) -> set[str]:
    """sys.modules after `code` ran in a fresh interpreter (this checkout's src/ and `path` importable)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PKG.parent), *map(str, path)])}
    code += "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_the_config_layer_imports_nothing_that_reads_the_hardware():
    """config.py and recipe.py load, merge, validate and record a recipe; which profile applies and what `auto`
    becomes are the run-time layer's choices (runtime.py). Imported, they bring no torch (so no torch.cuda); loading
    every recipe (which checks model.name against the models, torch and all) still reads no hardware."""
    imported = modules_after("import resnet_repro.config, resnet_repro.recipe")
    assert hardware_readers(imported) == [] and not {m for m in imported if m.split(".")[0] == "torch"}
    loaded = modules_after("from pathlib import Path\nfrom resnet_repro.recipe import load_config\n"
                           f"for p in sorted(Path({str(REPO / 'configs')!r}).rglob('*.yaml')):\n"
                           "    load_config(p, profile='cpu')")
    assert "resnet_repro.models.resnet" in loaded and hardware_readers(loaded) == []


def test_the_hardware_check_finds_a_reader(tmp_path):
    assert hardware_readers({"resnet_repro.config", "resnet_repro.data.cores", "resnet_repro.data.loading.cores",
                             "resnet_repro.runtime", "resnet_repro.data.cores_plan", "cores"}) == [
        "resnet_repro.data.cores", "resnet_repro.data.loading.cores", "resnet_repro.runtime"]
    (tmp_path / "made_up_config.py").write_text("import resnet_repro.config\nimport resnet_repro.runtime\n")
    assert "resnet_repro.runtime" in hardware_readers(modules_after("import made_up_config", tmp_path))
