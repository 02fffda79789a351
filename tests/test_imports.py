"""The package's import graph has no cycle, and every module imports on its own."""
import ast
import os
import subprocess
import sys

import neuronspec

PKG = os.path.dirname(neuronspec.__file__)


def modules() -> dict[str, str]:
    """{dotted name: path} of every module of the package (packages by their __init__)."""
    out = {}
    for folder, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path[:-3], os.path.dirname(PKG)).replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def import_graph(mods: dict[str, str]) -> dict[str, set[str]]:
    """module → the neuronspec modules it imports anywhere in its file (lazy imports count)."""
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.endswith("__init__.py")
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = m.split(".") if is_pkg else m.split(".")[:-1]
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    graph[m].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]], skip) -> list[str] | None:
    state, stack = {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if skip(u) or skip(v):
                continue
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if not state.get(v) and (c := visit(v)):
                return c
        stack.pop()
        state[u] = 2
        return None
    for m in sorted(graph):
        if not state.get(m) and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    mods = modules()
    graph = import_graph(mods)
    # package __init__ files only re-export what lies below them
    cycle = find_cycle(graph, skip=lambda m: mods[m].endswith("__init__.py"))
    assert cycle is None, " -> ".join(cycle)


def test_the_walk_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}, skip=lambda m: False) == ["a", "b", "c", "a"]
    graph = import_graph(modules())
    assert "neuronspec.nmt.checkpoint" in graph["neuronspec.nmt.evaluate"]  # a relative import resolved


def test_every_module_imports_in_a_fresh_interpreter():
    names = [m for m in modules() if not m.endswith("_cuda")]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# the pipeline order of docs/design.md §4: a module imports only from its own folder or from
# folders listed before it (cli reaches the commands through import strings, not imports)
LAYERS = (("errors", "atomic", "checks", "files", "bench"), ("ops",), ("data",), ("nmt",),
          ("specialization",), ("hf",), ("deploy",), ("study",), ("demo", "cli"))


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else None
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module}: not placed in LAYERS (add its folder where it belongs)")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{u} -> {v}" for u, vs in graph.items() if u != "neuronspec" for v in vs
                  if v != "neuronspec" and layer_of(v) > layer_of(u))


def test_imports_run_only_down_the_pipeline():
    assert upward_imports(import_graph(modules())) == []


def test_the_layer_check_sees_an_upward_import():
    graph = {"neuronspec.data.batching": {"neuronspec.nmt.model"}, "neuronspec.nmt.model": {"neuronspec.ops"},
             "neuronspec.ops": set()}
    assert upward_imports(graph) == ["neuronspec.data.batching -> neuronspec.nmt.model"]
