"""The package's layers, bottom first (LAYERS): a module imports only from its own layer or below.

Each rule is checked twice where it can be: statically (every import statement of a module, at module level or
inside a function) and by importing the modules in a fresh interpreter (what they load).
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


# The layers, bottom first. A module may import only from its own layer or below, lazy imports (inside functions)
# included. A name is a module, or a folder whose modules it covers unless they are named themselves.
LAYERS = [
    ("facts", ("limit", "limit.registry", "limit.runs.rundir", "limit.tracking.uri"),
     "datasets, methods and hyperparameters; a run directory's files; tracking URIs: plain data"),
    ("tracking", ("limit.tracking",), "mirrors run directories into MLflow, for the loop and the report alike"),
    ("settings", ("limit.config", "limit.noise", "limit.datasets", "limit.labels"),
     "a run's settings, its TrainingError, the label noise and the dataset sources: torch-free when imported"),
    ("runs", ("limit.runs",), "the workflow's grid and plan: it parses with them"),
    ("core", ("limit.runtime", "limit.data", "limit.models", "limit.methods", "limit.train", "limit.pack"),
     "the paper's training"),
    # The report sits above the core for one import: Figure 4 shows training images, which limit.data reads
    # (inside that function, so importing the report loads no torch: test_importing_a_layer_loads_none...).
    ("report, tools", ("limit.report", "limit.tools"), "read run directories and the run table; commands"),
    ("cli", ("limit.cli", "limit.__main__"), "the dispatch table"),
]
RANK = {name: rank for rank, (_, names, _) in enumerate(LAYERS) for name in names}


def layer(module):
    """The rank of a module's layer (0: the bottom), None if LAYERS has no place for it."""
    if module in RANK:
        return RANK[module]
    folder = module.rpartition(".")[0]
    return RANK.get(folder) if folder != "limit" else None


def test_every_module_has_a_layer_and_every_name_is_a_module():
    assert [m for m in MODULES if layer(m) is None] == [], "give these modules a layer in LAYERS"
    assert [n for n in RANK if n not in MODULES] == [], "LAYERS names what is no module"


def upward_imports(module):
    """'module:line imports name (layer), above its own (layer)' for each import of a module of a higher layer."""
    own = layer(module)
    return [f"{module}:{line} imports {name} ({LAYERS[layer(name)][0]}), above its own layer "
            f"({LAYERS[own][0]}: {LAYERS[own][2]})"
            for name, line, _ in imports(MODULES[module]) if name in MODULES and layer(name) > own]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_from_its_own_layer_or_below(module):
    assert upward_imports(module) == []


# Third-party packages a layer's files never import, even inside a function, and why.
PACKAGES = {
    ("limit.registry", "limit.runs", "limit.tracking.uri"): (("torch", "torchvision", "pandas", "matplotlib",
                                                              "mlflow"),
                                                             "the workflow parses with it: no scientific stack"),
    ("limit.report",): (("torch", "torchvision", "mlflow"), "renders from the run table and run directories"),
    ("limit.tracking",): (("torch", "torchvision"), "mirrors run directories into MLflow: no torch"),
}


def _under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_import_rules_for_third_party_packages(module):
    for prefixes, (packages, why) in PACKAGES.items():
        if _under(module, prefixes):
            for name, line, _ in imports(MODULES[module]):
                assert not _under(name, packages), f"{module}:{line} imports {name}: {why}"


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


def used_names(tree, module):
    """The names a file takes from ``module``, in every form of import: ``from limit.train import x``; ``import
    limit.train [as T]`` then ``limit.train.x`` or ``T.x``; ``from limit import train [as T]`` then ``T.x``."""
    parent, _, leaf = module.rpartition(".")
    used, aliases = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == parent:
            aliases |= {a.asname or a.name for a in node.names if a.name == leaf}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == module}
    return used | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and ast.unparse(n.value) in aliases}


@pytest.mark.parametrize("code", ["from limit.train import finish", "import limit.train\nlimit.train.finish()",
                                  "import limit.train as T\nT.finish()", "from limit import train\ntrain.finish()",
                                  "from limit import train as T\nT.finish()", "from limit.train import *"])
def test_the_public_api_check_sees_every_form_of_import(code):
    assert used_names(ast.parse(code), "limit.train") == ({"*"} if "*" in code else {"finish"})


def test_tools_use_the_public_api_of_train_and_runtime():
    import limit.runtime
    import limit.train
    public = {"limit.train": set(limit.train.__all__), "limit.runtime": set(limit.runtime.__all__)}
    for module, path in MODULES.items():
        if not module.startswith("limit.tools."):
            continue
        tree = ast.parse(path.read_text())
        for name, names in public.items():
            assert used_names(tree, name) <= names, f"{module} uses {used_names(tree, name) - names} of {name}"


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
