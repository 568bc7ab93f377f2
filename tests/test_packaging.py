"""vldd as an installed wheel: the app and every file it reads at start are inside it, and `vldd app` serves from it.

The wheel is built offline from a copy of the package (so the checkout gets no build/ or egg-info), installed into a
fresh venv outside the checkout whose dependencies come from the test's own environment, and run from a directory
outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import running_app

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 300) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(--[a-z][a-z-]*)", help_text)) - {"--help"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, venv python, venv bin, env, a directory outside the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "vldd", source / "vldd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", str(source),
          "-w", str(tmp / "dist")], tmp, env)
    wheel = next((tmp / "dist").glob("vldd-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    # The dependencies: this environment's site-packages, as plain paths (their .pth files, an editable vldd
    # among them, are not run), after the venv's own.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         tmp, env)
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return wheel, python, venv / "bin", env, elsewhere


@pytest.mark.slow  # builds a wheel and a venv (~30 s)
def test_the_wheel_holds_the_app_and_the_files_it_reads(installed):
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    app_modules = {f"vldd/app/{p.name}" for p in (ROOT / "vldd" / "app").glob("*.py")}
    assert {"vldd/app/__init__.py", "vldd/app/ui.py", "vldd/app/serve.py"} <= app_modules <= names
    assert "vldd/app/settings.yaml" in names  # every app setting, read at start
    templates = {f"vldd/hub/templates/{p.name}" for p in (ROOT / "vldd" / "hub" / "templates").glob("*.md")}
    assert templates and templates <= names


@pytest.mark.slow
def test_the_installed_app_imports_and_serves_from_outside_the_checkout(installed, tiny_cache):
    _, python, _, env, elsewhere = installed
    where = _run([str(python), "-c", "import vldd, vldd.app; print(vldd.__file__)"], elsewhere, env)
    assert Path(where.strip()).is_relative_to(python.parent.parent), where  # the wheel's copy, not the checkout
    help_text = _run([str(python), "-m", "vldd.app", "--help"], elsewhere, env)
    assert {"--host", "--port", "--share", "--allow-local-paths", "--config", "--cache-dir"} <= _flags(help_text)
    # It serves, with the settings inside the package (no spaces_config.yaml, no app.py around).
    with running_app([str(python), "-m", "vldd.app", "--cache-dir", str(tiny_cache)], _serve_env(env, elsewhere),
                     elsewhere) as (url, _):
        assert _page(url) == 200


@pytest.mark.slow
def test_the_vldd_app_command_of_the_wheel_takes_the_apps_flags_and_serves(installed, tiny_cache):
    _, python, bin_dir, env, elsewhere = installed
    module_help = _run([str(python), "-m", "vldd.app", "--help"], elsewhere, env)
    command_help = _run([str(bin_dir / "vldd"), "app", "--help"], elsewhere, env)
    # every flag of the app itself (python app.py), besides the options every vldd command has
    assert _flags(module_help) <= _flags(command_help)
    with running_app([str(bin_dir / "vldd"), "app", "--cache-dir", str(tiny_cache)], _serve_env(env, elsewhere),
                     elsewhere) as (url, _):
        assert _page(url) == 200


def _serve_env(env: dict, elsewhere: Path) -> dict:
    return {**env, "VLDD_APP_ROOT": str(elsewhere / "sessions"), "OMP_NUM_THREADS": "1", "HOME": str(elsewhere)}


def _page(url: str) -> int:
    import httpx

    return httpx.get(url, timeout=30).status_code
