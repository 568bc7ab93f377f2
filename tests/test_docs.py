"""The repository stands alone: no file points at design notes outside it, and every reference into docs/ resolves
to a file and, where one is named, a section that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "runs", "build", "dist", ".venv", "node_modules"}
# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile("|".join([r"DESIGN" + r"\.md", r"FAITHFULNESS" + r"\.md", r"\.\./" + "shared"]))
REFERENCE = re.compile(r"docs/([\w-]+\.md)(?:, \"([^\"]+)\")?")
LINK = re.compile(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)")


def text_files():
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]) or not path.is_file():
            continue
        try:
            yield path, path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # images, model files


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text().splitlines() if line.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_no_file_refers_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}" for path, text in text_files()
             for i, line in enumerate(text.splitlines(), 1) if OUTSIDE.search(line)]
    assert not found, "references to design notes outside the repository (point them at docs/):\n" + "\n".join(found)


def test_the_grep_finds_a_planted_reference():
    planted = "".join(["see DESIGN", ".md §3 and ..", "/shared/notes"])  # join: not folded into the .pyc
    assert len(OUTSIDE.findall(planted)) == 2


def test_references_into_docs_name_existing_files_and_sections():
    bad = []
    for path, text in text_files():
        for name, section in REFERENCE.findall(text):
            doc = DOCS / name
            if not doc.is_file():
                bad.append(f"{path.relative_to(ROOT)}: docs/{name} does not exist")
            elif section and section not in headings(doc):
                bad.append(f"{path.relative_to(ROOT)}: docs/{name} has no section {section!r}")
    assert not bad, "\n".join(bad)


def test_links_between_docs_resolve():
    bad = []
    for doc in sorted(DOCS.glob("*.md")):
        for name, anchor in LINK.findall(doc.read_text()):
            target = DOCS / name
            if not target.is_file():
                bad.append(f"{doc.name}: link to missing {name}")
            elif anchor and anchor not in {slug(h) for h in headings(target)}:
                bad.append(f"{doc.name}: {name} has no section #{anchor}")
    assert not bad, "\n".join(bad)


def test_slug_follows_github():
    assert slug("3. Image prototypes") == "3-image-prototypes"
    assert slug("Testing it without a GPU") == "testing-it-without-a-gpu"


def test_the_readme_indexes_every_doc():
    readme = (ROOT / "README.md").read_text()
    missing = [doc.name for doc in sorted(DOCS.glob("*.md")) if f"docs/{doc.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"


# A repository path as the prose writes it: `vldd/jobs/evaluate/`, tests/helpers/hub_server.py, ... (not a path
# inside another repository, such as the official code's `02_.../scripts/x.py`).
REPO_PATH = re.compile(r"(?<![\w/.-])((?:vldd|tests|benchmarks|docs|scripts)/[\w./-]*)")
# A dotted module path: `vldd.hub.push.push_distilled` (not a file name such as `.vldd.lock`).
MODULE_PATH = re.compile(r"(?<![\w.])vldd((?:\.\w+)+)")


def prose_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]


def missing_paths(text: str, root: Path = ROOT) -> list[str]:
    """The repository paths `text` names that do not exist under `root`."""
    return [path for path in (p.rstrip(".,:;") for p in REPO_PATH.findall(text)) if not (root / path).exists()]


def top_level_names(source: str) -> set[str]:
    """What a module defines at its top level (functions, classes, assignments, imports, `__all__`)."""
    import ast

    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def unresolved_modules(text: str, package: Path = ROOT / "vldd") -> list[str]:
    """The `vldd.a.b.name` paths in `text` whose module does not exist or does not define `name`."""
    bad = []
    for dotted in MODULE_PATH.findall(text):
        parts, folder = dotted.strip(".").split("."), package
        while parts and ((folder / parts[0]).is_dir() or (folder / f"{parts[0]}.py").is_file()):
            if (folder / parts[0]).is_dir():
                folder = folder / parts.pop(0)
            else:
                module = folder / f"{parts.pop(0)}.py"
                break
        else:
            module = folder / "__init__.py"
        if parts and parts[0] not in top_level_names(module.read_text()):
            bad.append(f"vldd{dotted}")
    return bad


def test_paths_and_modules_the_docs_name_exist():
    bad = [f"{path.relative_to(ROOT)}: {name}" for path in prose_files()
           for name in missing_paths(path.read_text()) + unresolved_modules(path.read_text())]
    assert not bad, "the docs name files or modules that do not exist:\n" + "\n".join(bad)


def test_the_path_and_module_checks_catch_a_moved_file():
    text = ("see `vldd/jobs/evaluation.py` and vldd/hub/push.py, `vldd.hub.push.load_captions`, "
            "`vldd.jobs.evaluate.run.evaluate`, vldd.nowhere.x, `.vldd.lock` and `02_x/scripts/y.py`.")
    assert missing_paths(text) == ["vldd/jobs/evaluation.py"]
    assert unresolved_modules(text) == ["vldd.hub.push.load_captions", "vldd.nowhere.x"]
