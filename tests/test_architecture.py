"""The folder tree is the architecture, and this test keeps it so: pure layers import only
the standard library and pure layers (proto only itself; config also proto, whose value
checks a configuration syntax may reuse), program packages never import each other, and
shared layers never import a program. A program package is one with a __main__.py."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "auditpy"
#: Pure layers and what each may import besides the standard library.
PURE = {"proto": {"proto"}, "config": {"config", "proto"}}


def packages() -> dict[str, Path]:
    return {p.name: p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def programs() -> set[str]:
    return {name for name, path in packages().items() if (path / "__main__.py").exists()}


def imported(path: Path) -> set[str]:
    """The auditpy subpackages `path` imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "auditpy" and len(parts) > 1 and parts[1] in packages():
                found.add(parts[1])
    return found


def test_the_layout_has_the_rooms_it_promises() -> None:
    assert {"proto", "config", "system"} <= set(packages())
    assert {"auditd", "audispd", "audisp_remote"} <= programs()


def test_pure_layers_import_only_themselves() -> None:
    bad = [
        f"{path.relative_to(PACKAGE)} imports auditpy.{other}"
        for layer, allowed in PURE.items() for path in (PACKAGE / layer).rglob("*.py")
        for other in imported(path) if other not in allowed
    ]
    assert not bad, "\n".join(bad)


def test_programs_never_import_each_other_and_layers_never_import_programs() -> None:
    progs = programs()
    bad = []
    for name, root in packages().items():
        for path in root.rglob("*.py"):
            for other in imported(path) & progs:
                if other != name:
                    bad.append(f"{path.relative_to(PACKAGE)} imports program auditpy.{other}")
    assert not bad, "\n".join(bad)


def test_every_public_name_exists_at_run_time() -> None:
    """What a module lists in __all__ is there when it runs: names that exist only for the
    type checker (inside `if TYPE_CHECKING:`) must not be listed. (__main__ modules run
    their program when imported, and are left out.)"""
    import importlib

    missing = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        module = importlib.import_module(name)
        absent = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
        if absent:
            missing[name] = absent
    assert not missing
