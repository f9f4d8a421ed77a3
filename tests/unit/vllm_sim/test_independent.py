"""vllm_sim imports nothing from epp: it stands in for vLLM, which knows nothing of its router."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vllm_sim

PACKAGE = Path(vllm_sim.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def epp_imports(source: str) -> list[str]:
    """The modules of epp that ``source`` imports, at any depth (also inside functions)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name == "epp" or name.startswith("epp.")]
    return found


def test_the_check_sees_every_form_of_import() -> None:
    source = (
        "import epp\nimport os, epp.config as c\nfrom epp.sim import x\n"
        "def f():\n    from epp import y\n"
        "import eppx\nfrom .epp import z\n"
    )
    assert epp_imports(source) == ["epp", "epp.config", "epp.sim", "epp"]


def test_the_package_has_its_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"__init__.py", "__main__.py", "cli.py", "engine.py", "server.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_epp(path: Path) -> None:
    assert epp_imports(path.read_text()) == []
