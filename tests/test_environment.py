"""The locked environments: requirements-lock.txt (development, CI, the README's commands) and requirements.txt (the
Space) pin one version of everything, inside pyproject.toml's ranges, and the README installs through the lock."""

import re
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The `name==version` lines of a lock that apply to `environment` (markers evaluated), by normalized name.

    Raises ValueError on any requirement line that is not an exact pin.
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if not match:
            raise ValueError(f"not an exact pin: {line!r}")
        name, version, marker = match.groups()
        if marker is None or Marker(marker).evaluate(environment):
            if _name(name) in found:
                raise ValueError(f"{name} is pinned twice for one environment")
            found[_name(name)] = version
    return found


def _requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    return [Requirement(text) for text in texts]


def _outside(requirements: list[Requirement], pinned: dict[str, str]) -> list[str]:
    return [f"{r.name}: {pinned.get(_name(r.name), 'not pinned')} (wants {r.specifier})" for r in requirements
            if _name(r.name) not in pinned or pinned[_name(r.name)] not in r.specifier]


def test_pins_reads_exact_pins_under_their_markers():
    text = "# header\na==1.0\n    # via b\nnumpy==2.4.6 ; python_full_version < '3.12'\nnumpy==2.5.5 ; " \
           "python_full_version >= '3.12'\n"
    assert pins(text, {"python_full_version": "3.11.7"}) == {"a": "1.0", "numpy": "2.4.6"}
    assert pins(text, {"python_full_version": "3.12.1"})["numpy"] == "2.5.5"
    with pytest.raises(ValueError, match=r"not an exact pin: 'torch>=2.8'"):
        pins("torch>=2.8\n")
    with pytest.raises(ValueError, match="numpy is pinned twice"):
        pins("numpy==1\nnumpy==2\n")
    assert _outside([Requirement("torch>=2.8,<2.15")], {"torch": "2.15.0"}) == ["torch: 2.15.0 (wants <2.15,>=2.8)"]


@pytest.mark.parametrize("python", ["3.10.13", "3.11.7", "3.12.1"])
def test_the_lock_pins_every_dependency_and_extra_inside_the_ranges(python):
    """One consistent set for every Python vldd supports: the dependencies and the `dev` extras (all the tests need)."""
    environment = {"python_full_version": python, "python_version": python.rsplit(".", 1)[0],
                   "sys_platform": "linux", "platform_machine": "x86_64"}
    pinned = pins((ROOT / "requirements-lock.txt").read_text(), environment)
    assert _outside(_requirements("dev"), pinned) == []
    assert {"torch", "gradio", "spaces", "pytest", "ruff", "playwright"} <= set(pinned)
    assert "vldd" not in pinned  # installed from the checkout: pip install --no-deps -e .


def test_the_spaces_requirements_pin_everything_for_its_python():
    space = (ROOT / "spaces_config.yaml").read_text()
    python = re.search(r'python_version: *"?([0-9.]+)', space).group(1)
    environment = {"python_full_version": f"{python}.0", "python_version": python, "sys_platform": "linux",
                   "platform_machine": "x86_64"}
    pinned = pins((ROOT / "requirements.txt").read_text(), environment)
    assert _outside(_requirements("app"), pinned) == []
    assert pinned["torch"] in re.search(r"zerogpu_torch: *\[(.*)\]", space).group(1)
    assert "pytest" not in pinned  # the Space gets the app's extras, not the development tools


def test_the_readme_installs_through_the_lock():
    readme = (ROOT / "README.md").read_text()
    test_command = readme.split("<!-- test-command -->")[1].split("```bash\n")[1].split("\n")[0]
    assert test_command == "pip install -r requirements-lock.txt && pip install --no-deps -e . && python -m pytest"
    assert "pip install -r requirements-lock.txt && pip install --no-deps -e . && vldd distill --preset tiny " \
           "--output runs/tiny" in readme
    assert "scripts/lock.sh" in readme and (ROOT / "scripts" / "lock.sh").is_file()

