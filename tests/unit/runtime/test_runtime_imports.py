"""The runtime is what a .mar ships: it imports nothing outside itself but the standard
library, numpy, Pillow and torch; and no module of the package imports test-support code."""

from __future__ import annotations

import ast
import sys
import zipfile
from pathlib import Path

import pytest

import atelier
from atelier.training.archive import ArchiveResult

pytestmark = pytest.mark.unit

PACKAGE = Path(atelier.__file__).resolve().parent
RUNTIME = PACKAGE / "runtime"
THIRD_PARTY = {"numpy", "PIL", "torch"}
TEST_SUPPORT = {"support", "tests", "conftest", "pytest"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1]  # a module's package, or an __init__'s own package
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            # "from atelier import x": x may be a module
            out += [(node.lineno, f"{name}.{a.name}") for a in node.names if name == "atelier"]
    return out


def outside_runtime(module: str) -> bool:
    top = module.split(".")[0]
    if top == "__future__" or top in sys.stdlib_module_names or top in THIRD_PARTY:
        return False
    return not (module == "atelier.runtime" or module.startswith("atelier.runtime."))


def test_runtime_imports_only_itself_the_stdlib_numpy_pillow_and_torch() -> None:
    modules = sorted(RUNTIME.rglob("*.py"))
    assert len(modules) > 5, modules
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for path in modules
        for line, name in imports(path)
        if outside_runtime(name)
    ]
    assert not bad, "\n".join(bad)


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    assert outside_runtime("atelier.training.config")
    assert outside_runtime("atelier")
    assert outside_runtime("yaml")
    assert not outside_runtime("atelier.runtime.errors")
    assert not outside_runtime("numpy.typing")
    assert not outside_runtime("json")


def test_no_package_module_imports_test_support_code() -> None:
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, name in imports(path)
        if name.split(".")[0] in TEST_SUPPORT
    ]
    assert not bad, "\n".join(bad)


def test_the_mar_ships_only_the_runtime(smoke_store: ArchiveResult) -> None:
    with zipfile.ZipFile(smoke_store.mar_path) as mar:
        code = sorted(n for n in mar.namelist() if n.startswith("atelier/"))
    shipped = {n for n in code if n.endswith(".py")}
    expected = {"atelier/__init__.py"} | {
        f"atelier/runtime/{p.relative_to(RUNTIME).as_posix()}" for p in RUNTIME.rglob("*.py")
    }
    assert shipped == expected
    assert all(n.startswith(("atelier/runtime/", "atelier/__init__.py")) for n in code), code
