"""The install files agree with each other and with the README."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    listed = set()
    environment = (ROOT / "environment.yml").read_text()
    for line in environment.split("\ndependencies:", 1)[1].splitlines():
        m = re.match(r"^\s+- ([A-Za-z][\w.-]*.*)$", line)
        if m and not m.group(1).startswith("-e") and not m.group(1).endswith(":"):
            name = _name(m.group(1))
            listed.add(CONDA_NAMES.get(name, name))
    assert listed - NOT_PACKAGES == wanted


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"```bash\n(pip install -e \"\.\[dev\]\")\n```", readme)
    assert install, "README has no install block"
    assert "python -m " + install.group(1) in ci.replace("--quiet ", "")
    test = re.search(r"```bash\n(pytest)\n```", readme)
    assert test, "README has no test block"
    assert re.search(r"^python -m pytest$", ci, re.M)
