"""The package's layers and their import rules: the paper's core flat in limit/, support layers in folders.

Each rule is checked twice where it can be: statically (every import statement of the layer's files, at module
level or inside a function) and by importing the layer's modules in a fresh interpreter (what they load).
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "limit"
HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "mlflow", "sklearn", "scipy", "seaborn")


def module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path):
    """(imported module, line, inside a function) of every import statement of a file; ``from limit import x``
    names module ``limit.x`` where x is one."""
    found = []
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(c) for f in functions for c in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in MODULES else node.module, node.lineno, id(node) in nested))
    return found


def layer(module):
    folder = MODULES[module].parent
    return "core" if folder == PACKAGE else folder.name


# layer -> (third-party packages none of its files imports, limit modules none of its files imports, and why)
RULES = {
    "runs": (("torch", "torchvision", "pandas", "matplotlib", "mlflow"),
             ("limit.data", "limit.models", "limit.methods", "limit.train", "limit.runtime", "limit.report",
              "limit.tools", "limit.tracking.client", "limit.tracking.server", "limit.cli"),
             "the workflow parses with it: no scientific stack, no MLflow"),
    "report": (("torch", "torchvision", "mlflow"),
               ("limit.models", "limit.methods", "limit.train", "limit.runtime", "limit.tools", "limit.cli"),
               "renders from the run table and run directories: no torch"),
    "tracking": (("torch", "torchvision"), ("limit.data", "limit.models", "limit.methods", "limit.train",
                                            "limit.runtime", "limit.report", "limit.tools", "limit.cli"),
                 "mirrors run directories into MLflow: no torch"),
    "datasets": ((), ("limit.data", "limit.models", "limit.methods", "limit.train", "limit.report", "limit.tools",
                      "limit.tracking", "limit.cli"), "loaders below the core's data module"),
    "tools": ((), ("limit.cli",), "commands over the public API"),
    "core": ((), ("limit.report", "limit.tools", "limit.cli"), "the paper's code does not reach up"),
}
# The one data load of the report: Figure 4 shows training images (torch reads them, inside that function).
ALLOWED = {("limit.report.render", "limit.data")}


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_rules(module):
    if module in ("limit.cli", "limit.__main__"):  # the top: the dispatch table
        return
    packages, limit_modules, why = RULES[layer(module)]
    for name, line, _ in imports(MODULES[module]):
        if (module, name) in ALLOWED:
            continue
        assert not _under(name, packages), f"{module}:{line} imports {name}: {why}"
        assert not _under(name, limit_modules), f"{module}:{line} imports {name}: {why}"


def _graph():
    return {m: {n for n, _, _ in imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}


def test_no_import_cycle():
    """Lazy imports (inside functions) count: a cycle through one is still a cycle."""
    graph, state, path = _graph(), {}, []

    def visit(m):
        state[m] = "open"
        path.append(m)
        for n in sorted(graph[m]):
            assert state.get(n) != "open", "import cycle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n)
        path.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_tools_use_the_public_api_of_train_and_runtime():
    import limit.runtime
    import limit.train
    public = {"limit.train": set(limit.train.__all__), "limit.runtime": set(limit.runtime.__all__)}
    for module, path in MODULES.items():
        if layer(module) != "tools":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in public:
                names = {a.name for a in node.names}
                assert names <= public[node.module], f"{module} imports {names - public[node.module]} of {node.module}"


def _loaded(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


LIGHT = ("torch", "pandas", "matplotlib", "mlflow")


@pytest.mark.pipeline  # a fresh interpreter, in a subprocess: this one has imported everything
@pytest.mark.parametrize("prefix, banned", [
    ("limit.runs", LIGHT), ("limit.report", ("torch",)), ("limit.tracking", ("torch", "mlflow")),
    # torch only inside the functions that load data: the workflow checks images and labels when it parses
    ("limit.datasets", LIGHT),
    ("limit.cli", LIGHT), ("limit.config", LIGHT), ("limit.registry", HEAVY)])
def test_importing_a_layer_loads_none_of_its_banned_packages(prefix, banned):
    names = [m for m in MODULES if m.startswith(prefix + ".") or m == prefix]
    code = (f"import json, sys; [__import__(m) for m in {names!r}]; "
            f"print(json.dumps(sorted(m for m in {list(banned)!r} if m in sys.modules)))")
    assert _loaded(code) == []


@pytest.mark.pipeline  # a fresh interpreter, in a subprocess
def test_importing_tracking_changes_no_environment_variable():
    code = ("import json, os; before = dict(os.environ); import limit.tracking.client, limit.tracking.server; "
            "print(json.dumps(dict(os.environ) == before))")
    assert _loaded(code) is True


def test_the_workflow_imports_only_runs_and_the_registry():
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("from limit", "import limit")):
                module = stripped.split()[1]
                assert _under(module, ("limit.runs", "limit.registry")), f"{path.name}: {stripped}"


def test_the_package_tree_has_one_folder_per_layer():
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == ["datasets", "report", "runs", "tools", "tracking"]
    core = sorted(m for m in MODULES if layer(m) == "core")
    assert core == ["limit", "limit.__main__", "limit.cli", "limit.config", "limit.data", "limit.methods",
                    "limit.models", "limit.noise", "limit.pack", "limit.registry", "limit.runtime", "limit.train"]
