"""A Space's files agree with each other: README.md's front matter, requirements.txt and spaces_config.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .settings import SpaceConfig


def read_front_matter(readme: str | Path) -> dict[str, Any]:
    """The YAML block between the leading `---` lines of a README."""
    text = Path(readme).read_text()
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        raise ValueError(f"{str(readme)!r} has no front matter (a YAML block between '---' lines at the top)")
    return yaml.safe_load(match.group(1)) or {}


def check_space_files(root: str | Path, space: SpaceConfig) -> list[str]:
    """Disagreements between README.md's front matter, requirements.txt and spaces_config.yaml (empty = none)."""
    root = Path(root)
    problems = []
    try:
        front = read_front_matter(root / "README.md")
    except (OSError, ValueError) as err:
        return [str(err)]
    expected = {"sdk": space.space.get("sdk", "gradio"), "sdk_version": str(space.space.get("sdk_version")),
                "app_file": space.space.get("app_file", "app.py"),
                "python_version": str(space.space.get("python_version")), "hf_oauth": True,
                "hf_oauth_scopes": space.space.get("hf_oauth_scopes")}
    for key, value in expected.items():
        got = front.get(key)
        got = str(got) if key in ("sdk_version", "python_version") and got is not None else got
        if got != value:
            problems.append(f"README.md front matter `{key}` is {got!r}; spaces_config.yaml says {value!r}")
    if not (root / str(front.get("app_file", ""))).is_file():
        problems.append(f"README.md's app_file {front.get('app_file')!r} does not exist")
    requirements = root / "requirements.txt"
    if not requirements.is_file():
        problems.append("requirements.txt is missing: a Space installs its dependencies from it")
    else:
        lines = [line.split("#")[0].strip().replace(" ", "") for line in requirements.read_text().splitlines()]
        if not {f"gradio=={expected['sdk_version']}", f"gradio[oauth]=={expected['sdk_version']}"} & set(lines):
            problems.append(f"requirements.txt must pin gradio=={expected['sdk_version']} (the sdk_version)")
        if not any(re.match(r"^spaces([<>=!~].*)?$", line) for line in lines):
            problems.append("requirements.txt must list `spaces` (ZeroGPU)")
        offered = [str(v) for v in space.space.get("zerogpu_torch") or []]
        torch_pins = [line.split("==", 1)[1] for line in lines if line.startswith("torch==")]
        if offered and (len(torch_pins) != 1 or torch_pins[0] not in offered):
            problems.append(f"requirements.txt must pin torch to one version ZeroGPU offers ({', '.join(offered)}), "
                            f"got {torch_pins or 'no torch== line'}")
        if not any(line.startswith("torchvision==") for line in lines):
            problems.append("requirements.txt must pin torchvision (the release built for the pinned torch)")
    return problems
