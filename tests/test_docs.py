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
