"""The package's shape: one-way layers, no import circles, short functions, words without history.

Read from the source with ``ast`` (nothing is imported), so the checks see deferred imports too.
"""

import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PACKAGE = os.path.join(ROOT, "boostray")


def modules() -> dict[str, str]:
    """Every module of the package: dotted name -> path."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imports_of(path: str, known: dict[str, str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports_of(p, known) - {m} for m, p in known.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else module


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in edges[m]:
            if state.get(n) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [m, n]) if n in path
                            else f"import circle through {m} -> {n}")
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])


@pytest.mark.parametrize("lower,forbidden", [
    ("core", ("boostray.config", "distributed", "apps", "boostray.cli")),
    ("distributed", ("apps", "boostray.cli")),
])
def test_layers_import_one_way(lower, forbidden):
    wrong = [(m, n) for m, targets in graph().items() if layer(m) == lower
             for n in targets if layer(n) in forbidden or n in forbidden]
    assert not wrong, wrong


def test_no_function_is_over_80_lines():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_code_speaks_of_what_and_why_not_of_its_history():
    pattern = re.compile(r"issue[ -]?[0-9]|this session|\.\./shared", re.IGNORECASE)
    hits = []
    for folder in ("boostray", "pipelines"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".yaml", ".md")):
                    text = open(os.path.join(base, name)).read()
                    hits += [f"{name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not hits, hits


def test_no_document_shows_a_developers_absolute_folder():
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    hits = [f for f in tracked if re.search(r"/work/|/home/\w+|/root/", open(os.path.join(ROOT, f)).read())]
    assert not hits, hits


#: the private Ray names boostray uses, where, and why (docs/architecture.md lists them too)
PRIVATE_RAY = {("boostray.distributed.owned_instance", "_create_default_callbacks")}


def private_ray_names(path: str) -> set[str]:
    """Underscore names ``path`` takes from Ray: imported from a ray module, a ray module path with a
    private part, or a private method called through super() of a Ray class, or a private keyword."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            found |= {a.name for a in node.names if a.name.startswith("_")}
            found |= {p for p in node.module.split(".") if p.startswith("_")}
        elif isinstance(node, ast.Import):
            found |= {p for a in node.names if a.name.split(".")[0] == "ray" for p in a.name.split(".") if p.startswith("_")}
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                found.add(node.attr)
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id == "ray":
                found.add(node.attr)
        elif isinstance(node, ast.keyword) and (node.arg or "").startswith("_"):
            found.add(node.arg)
    return found


def test_the_private_ray_surface_is_one_method_in_one_module():
    used = {(name, private) for name, path in modules().items() for private in private_ray_names(path)}
    assert used == PRIVATE_RAY
    architecture = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    assert all(private in architecture for _, private in PRIVATE_RAY)
