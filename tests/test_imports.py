"""vldd's import graph has layers: a module imports only from its own layer or below, and nothing imports in a cycle.

Every `import` counts, including the ones inside functions (they are the same dependency, only deferred); imports
under `if TYPE_CHECKING:` do not. Known violations are listed in `ALLOWED` with the reason, to be removed as the code
is moved; the test fails on any new violation and on an entry that no longer occurs.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vldd"

# Bottom to top. The package itself ("vldd": __version__ and lazy re-exports) is at the bottom.
LAYERS = [
    {"vldd", "config", "profiles", "runs", "devices", "seeding", "provenance", "cards"},  # no model code
    {"classnames", "data", "sample", "tiny", "shapes", "builtin", "prototypes", "text_prototypes", "captioning", "generation", "students", "augment"},
    {"evaluation", "teacher", "finetuning", "hub", "plan"},  # jobs built from the stages
    # the distillation orchestrator, and the recipes that run it (per seed, per ablation variant) then evaluate
    {"distillation", "reproduce", "ablation"},
    {"cli", "reports", "app_logic", "space_gpu", "space_uploads", "__main__"},  # entry points and the app's own code
]

# (importer, imported): why it is there today. Phase B of issue 12 moves the code and removes the entries.
ALLOWED = {
}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, modules: set[str]):
    """The vldd modules a module's code imports, anywhere in it."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vldd":
                    yield parts[1] if len(parts) > 1 else "vldd"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level == 0 and not (base == "vldd" or base.startswith("vldd.")):
                continue
            if node.level == 0:
                base = base.removeprefix("vldd").lstrip(".")
            if base:
                yield base.split(".")[0]
            else:  # `from . import x`: a submodule, or a name of the package
                for alias in node.names:
                    yield alias.name if alias.name in modules else "vldd"


def import_graph() -> dict[str, set[str]]:
    files = {("vldd" if p.stem == "__init__" else p.stem): p for p in PACKAGE.glob("*.py")}
    return {name: set(_imports(ast.parse(path.read_text()), set(files))) - {name} for name, path in files.items()}


def layer_of(module: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if module in layer)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_every_module_has_a_layer():
    placed = set().union(*LAYERS)
    assert set(import_graph()) <= placed, f"put these modules in a layer: {sorted(set(import_graph()) - placed)}"


def test_no_upward_import_and_no_cycle():
    graph = {a: {b for b in deps if (a, b) not in ALLOWED} for a, deps in import_graph().items()}
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a))
    assert not upward, f"imports from a higher layer (importer, imported): {upward}"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_allowed_violations_still_exist():
    graph = import_graph()
    gone = sorted(edge for edge in ALLOWED if edge[1] not in graph.get(edge[0], set()))
    assert not gone, f"these imports are gone: remove them from ALLOWED: {gone}"


def test_the_checks_catch_what_they_should():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse("from .pipeline import distill\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from .hub import x\ndef f():\n    from . import config, __version__\n    import vldd.tiny\n")
    assert set(_imports(tree, {"pipeline", "config", "hub", "tiny"})) == {"pipeline", "config", "vldd", "tiny"}
