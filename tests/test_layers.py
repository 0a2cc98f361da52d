"""The package's layers, read from its imports (ast): no module imports from a layer above
its own, and no import cycle, counting imports inside functions and under TYPE_CHECKING.

The layers, lowest first (docs/internals.md, "How the code is laid out"). A module may
import from its own package and from any lower layer; packages of one layer do not import
each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dagnats_nb"

LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("dag",),
    ("config",),
    ("wire",),
    ("transport",),
    ("server",),
    ("runtime",),
    ("llm", "observe", "ops"),
    ("facade",),
    ("adapters", "adapters.cli", "adapters.http", "adapters.notebook"),
    ("__init__", "__main__"),  # the composition root: re-exports, plugs adapters in
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 520


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def unit_of(module: str) -> str:
    if module in ("__init__", "__main__"):
        return module
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        head = ".".join(parts[:i])
        if head in RANK:
            return head
    raise AssertionError(f"module dagnats_nb.{module} is in no layer: add its package to LAYERS")


def modules() -> dict[str, Path]:
    return {module_name(f): f for f in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported module of this package, line) for every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if module == "__init__":
        package = ""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(["dagnats_nb", *base] + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module
            targets = [f"{mod}.{a.name}" for a in node.names]
        for target in targets:
            if target != "dagnats_nb" and not target.startswith("dagnats_nb."):
                continue
            name = target.removeprefix("dagnats_nb").removeprefix(".") or "__init__"
            while name not in known and "." in name:
                name = name.rpartition(".")[0]
            if name not in known and "." not in name and name != "__init__":
                name = "__init__"  # ``from dagnats_nb import X``: the package itself
            hit = (name, node.lineno)
            inside = name == module or module.startswith(name + ".")
            if name in known | {"__init__"} and not inside and hit not in out:
                out.append(hit)
    return out


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def test_no_module_imports_from_a_layer_above_it():
    mods = modules()
    problems = []
    for module, deps in graph().items():
        unit = unit_of(module)
        for dep, line in deps:
            other = unit_of(dep)
            if other == unit or RANK[other] < RANK[unit]:
                continue
            where = "its own layer" if RANK[other] == RANK[unit] else "a layer above it"
            problems.append(
                f"{mods[module].relative_to(PACKAGE.parent)}:{line} imports dagnats_nb.{dep} "
                f"({other}, {where}): {unit} may import only from its own package and "
                f"{', '.join(u for u in RANK if RANK[u] < RANK[unit]) or 'nothing'}"
            )
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    g = graph()
    mods = modules()
    cycles: set[str] = set()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for dep, _ in g[m]:
            if state.get(dep) == 1:
                cyc = path[path.index(dep) :] + [dep]
                cycles.add(" -> ".join(str(mods[c].relative_to(PACKAGE.parent)) for c in cyc))
            elif dep not in state:
                visit(dep, path + [dep])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_every_package_is_in_a_layer():
    for module in modules():
        unit_of(module)  # raises naming the module


def test_modules_are_small():
    big = {
        str(f.relative_to(PACKAGE.parent)): n
        for f in PACKAGE.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines (split them by what they do): {big}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk itself: a facade module importing an adapter is found, with its line."""
    (tmp_path / "x.py").write_text("def f():\n    from dagnats_nb.adapters.cli import main\n")
    found = imports("facade.x", tmp_path / "x.py", {"adapters.cli", "adapters.cli.main"})
    assert found == [("adapters.cli.main", 2)]
    assert RANK[unit_of("adapters.cli.main")] > RANK[unit_of("facade.x")]
