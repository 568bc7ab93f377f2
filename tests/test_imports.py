"""vldd's folders are layers: a folder imports only from itself and from folders below it, and no module imports
another in a cycle.

Every `import` counts, including the ones inside functions (they are the same dependency, only deferred); imports
under `if TYPE_CHECKING:` do not. Folders on one layer do not import each other. `ALLOWED` lists known violations
with the reason, to be removed as the code moves; it is empty, and the test fails on any new violation.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vldd"

# Bottom to top. "vldd" is the package's own __init__ (__version__ and lazy re-exports, whose imports are deferred
# and typed only); "__main__" is `python -m vldd`.
LAYERS = [
    {"vldd", "configs"},  # every job's settings: dataclasses, presets, profiles (no torch)
    {"core"},  # run directories, devices, seeding, provenance
    {"data", "models"},  # sources and class names; the offline model factories and the students
    {"stages", "hub"},  # VLCP's stages on tensors and text; the Hub writer, cards and captions reader
    {"jobs"},  # what a user runs: distill, finetune, evaluate, teacher, plan, reproduce, ablate
    {"app"},  # the Gradio app and its Space
    {"cli"},  # the `vldd` command (`vldd app` serves the app)
    {"__main__"},  # `python -m vldd` runs the CLI
]

# (importer folder, imported folder): why it is there today.
ALLOWED: dict[tuple[str, str], str] = {}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_name(path: Path) -> str:
    """'jobs.distill' for vldd/jobs/distill.py, 'jobs' for vldd/jobs/__init__.py, 'vldd' for vldd/__init__.py."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "vldd"


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]):
    """The vldd modules (dotted, under vldd) a module's code imports, anywhere in it."""
    here = [] if module == "vldd" else module.split(".")
    package = here if is_package else here[:-1]
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
                    yield ".".join(parts[1:]) or "vldd"
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "vldd":
                    continue
                base = parts[1:]
            else:
                base = package[:len(package) - (node.level - 1)] + ((node.module or "").split(".") if node.module else [])
            for alias in node.names:  # `from .x import y`: y may itself be a module
                full = ".".join([*base, alias.name])
                yield full if full in modules else (".".join(base) or "vldd")


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: set(_imports(ast.parse(path.read_text()), name, path.stem == "__init__", set(files))) - {name}
            for name, path in files.items()}


def folder_of(module: str) -> str:
    return "vldd" if module == "vldd" else module.split(".")[0]


def layer_of(folder: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if folder in layer)


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


def violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) module pairs whose folders break the layering."""
    bad = []
    for a, deps in graph.items():
        for b in deps:
            fa, fb = folder_of(a), folder_of(b)
            if fa != fb and fb != "vldd" and layer_of(fb) >= layer_of(fa) and (fa, fb) not in ALLOWED:
                bad.append((a, b))
    return sorted(bad)


def test_every_folder_has_a_layer():
    placed = set().union(*LAYERS)
    folders = {folder_of(m) for m in import_graph()}
    assert folders <= placed, f"put these folders in a layer: {sorted(folders - placed)}"


def test_only_entry_modules_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], f"modules belong in a role folder, not at the top: {top}"


def test_no_upward_or_sideways_import_and_no_cycle():
    graph = import_graph()
    assert not violations(graph), f"imports from a folder on the same or a higher layer (importer, imported): " \
                                  f"{violations(graph)}"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_allowed_violations_still_exist():
    graph = import_graph()
    used = {(folder_of(a), folder_of(b)) for a, deps in graph.items() for b in deps}
    gone = sorted(edge for edge in ALLOWED if edge not in used)
    assert not gone, f"these imports are gone: remove them from ALLOWED: {gone}"


def test_the_checks_catch_what_they_should():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse("from ..stages.generate import x\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from ..hub.push import y\ndef f():\n    from .. import __version__\n    from ..core import runs\n"
                     "    import vldd.models.tiny\n    from . import plan\n")
    modules = {"stages.generate", "hub.push", "core.runs", "models.tiny", "jobs.plan", "jobs.distill"}
    assert set(_imports(tree, "jobs.distill", False, modules)) == {
        "stages.generate", "vldd", "core.runs", "models.tiny", "jobs.plan"}
    # a stage importing a job is upward; data importing models is sideways; a job importing a stage is fine
    graph = {"stages.generate": {"jobs.plan"}, "data.sources": {"models.tiny"}, "jobs.plan": {"stages.generate"}}
    assert violations(graph) == [("data.sources", "models.tiny"), ("stages.generate", "jobs.plan")]


def _private_names(tree: ast.AST) -> list[str]:
    """The private names (`_x`, not dunder) a module's code imports from vldd modules."""
    return [a.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vldd"))
            for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]


def private_imports() -> list[tuple[str, str]]:
    """(importer, name) for every private name a vldd module imports from another vldd module."""
    return sorted((module_name(path), name) for path in PACKAGE.rglob("*.py")
                  for name in _private_names(ast.parse(path.read_text())))


def test_no_private_name_is_imported_across_modules():
    assert not private_imports(), f"make these public in the module that owns them: {private_imports()}"
    tree = ast.parse("from .sources import _find, find\nfrom vldd.core.runs import _lock\nfrom torch import _C\n"
                     "from .. import __version__\n")
    assert _private_names(tree) == ["_find", "_lock"]
