"""What each module of medsam_gui imports, read from its source with ``ast`` (nothing is run).

Every import statement counts, at module level or inside a function or class; imports under
``if TYPE_CHECKING:`` do not (they never run). Used by test_import_graph.py and test_layering.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "medsam_gui"


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name: the module imported (or the package an object comes from)
    line: int
    top_level: bool  # False: inside a function (runs only when the function is called)


def modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of medsam_gui (packages by their __init__)."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """The imports of module ``name`` (file ``path``). ``from P import X`` names P.X when P.X is
    one of the ``known`` modules, else P; relative imports are made absolute."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub, top_level)
                continue
            visit_stmt(child, top_level)

    def visit_stmt(node: ast.AST, top_level: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, top_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append(Import(sub if sub in known else source, node.lineno, top_level))
        # a class body runs on import, a function body only when called
        visit(node, top_level and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True)
    return found


def graph() -> dict[str, dict[str, Import]]:
    """module -> {imported medsam_gui module: first such import}."""
    mods = modules()
    known = set(mods)
    out: dict[str, dict[str, Import]] = {}
    for name, path in mods.items():
        edges: dict[str, Import] = {}
        for imp in imports(name, path, known):
            if imp.target in known and imp.target != name:
                edges.setdefault(imp.target, imp)
        out[name] = edges
    return out
