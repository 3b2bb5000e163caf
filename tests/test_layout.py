"""The house rules, checked on the source itself (ast, no imports): no import cycle, no
private name used across modules, runtime modules and CLI commands that stay small, bench
scripts that share code through bench/common.py only, and comments about the code rather
than the history of its writing (docs/ARCHITECTURE.md describes the layout)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "granite_ops_kit": REPO / "granite_ops_kit",
    "granite_runtime": REPO / "runtime" / "granite_runtime",
}
RUNTIME_MODULE_MAX_LINES = 400
CLI_FUNCTION_MAX_LINES = 40


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The project module `name` is, or is inside (a.b.C -> a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(project modules it imports anywhere in its body, private names it reaches in others)."""
    tree = ast.parse(MODULES[module].read_text())
    targets, private, aliases = set(), [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if owner := _owner(alias.name):
                    targets.add(owner)
                    aliases[alias.asname or alias.name] = owner
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    targets.add(full)
                    aliases[alias.asname or alias.name] = full
                elif owner := _owner(node.module):
                    targets.add(owner)
                    if _is_private(alias.name):
                        private.append(f"{module}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            other = aliases.get(node.value.id)
            if other and other != module and _is_private(node.attr):
                private.append(f"{module}: {node.value.id}.{node.attr}")
    # a package's __init__ is not a dependency of its own modules
    return {t for t in targets if t != module and not module.startswith(t + ".")}, private


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = counter[0]
                    counter[0] += 1
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph[step]))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = {module: _imports(module)[0] for module in MODULES}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_used_outside_its_module():
    assert [p for module in MODULES for p in _imports(module)[1]] == []


def test_runtime_modules_stay_small():
    sizes = {
        module: len(path.read_text().splitlines())
        for module, path in MODULES.items()
        if module.startswith("granite_runtime")
    }
    assert {m: n for m, n in sizes.items() if n > RUNTIME_MODULE_MAX_LINES} == {}


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's code: its body after the docstring (a command's --help)."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_cli_functions_do_little():
    """A command parses, calls the core and prints: at most 40 lines of code. Its options
    are declared one a line in its signature (the shared ones once, in cli/options.py)."""
    long = []
    for path in (REPO / "granite_ops_kit" / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and (lines := _code_lines(node)) > CLI_FUNCTION_MAX_LINES:
                long.append(f"{path.name}:{node.name} {lines} lines")
    assert long == []


def test_bench_scripts_share_code_through_common_only():
    scripts = {p.stem for p in (REPO / "bench").glob("*.py")}
    crossing = []
    for path in (REPO / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            crossing += [f"{path.stem} -> {n}" for n in names if n in scripts - {"common"}]
    assert crossing == []


@pytest.mark.parametrize("folder", ["granite_ops_kit", "runtime", "bench", "tests", "scripts"])
def test_comments_describe_the_code_not_its_history(folder):
    history = re.compile(r"\b[Ss]essions? ?\d+|session\d|_session\d")
    hits = [
        f"{path.relative_to(REPO)}:{number}"
        for path in (REPO / folder).rglob("*")
        if path.suffix in {".py", ".c", ".sh"} and path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if history.search(line)
    ]
    assert hits == []


def test_the_private_name_check_finds_one(tmp_path, monkeypatch):
    """The checker itself sees `from m import _x` and `m._x` across modules."""
    (tmp_path / "a.py").write_text("def _hidden():\n    pass\n")
    (tmp_path / "b.py").write_text(
        "from granite_ops_kit.fake_a import _hidden\n"
        "from granite_ops_kit import fake_a\n"
        "fake_a._hidden()\n"
    )
    monkeypatch.setitem(MODULES, "granite_ops_kit.fake_a", tmp_path / "a.py")
    monkeypatch.setitem(MODULES, "granite_ops_kit.fake_b", tmp_path / "b.py")
    targets, private = _imports("granite_ops_kit.fake_b")
    assert "granite_ops_kit.fake_a" in targets
    assert private == [
        "granite_ops_kit.fake_b: from granite_ops_kit.fake_a import _hidden",
        "granite_ops_kit.fake_b: fake_a._hidden",
    ]
