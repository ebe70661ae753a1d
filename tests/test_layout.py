"""The source tree keeps its shape: every module on its floor, no block of code twice.

Floors, lowest first (docs/design.md explains each): a module imports from its own floor
or a lower one, never from a higher one. The one exception is a notebook's
``_repr_html_``, which a lower floor's object must define under that name and which may
reach up to the report lazily, inside the method.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "backprobe"

#: Top-level module or subpackage → floor. The package's own ``__init__`` re-exports
#: the public API from every floor, lazily, and stands above them all.
FLOORS: dict[str, int] = {
    "errors": 0,
    "_format": 0,
    "_version": 0,
    "_lazy": 0,
    "activations": 0,
    "store": 1,
    "theory": 1,
    "probe": 2,
    "diagnose": 3,
    "remedies": 3,
    "report": 4,
    "integrations": 5,
    "lab": 6,
    "cli": 7,
    "__main__": 7,
    "": 8,  # backprobe/__init__.py
}
#: Methods that may import upward, inside their body only.
MAY_REACH_UP = {"_repr_html_"}
#: A block of this many consecutive non-blank lines may not stand twice in src/.
REPEAT_LINES = 6


def modules(package: Path = PACKAGE) -> list[Path]:
    return sorted(package.rglob("*.py"))


def dotted(path: Path, src: Path = SRC) -> list[str]:
    """``backprobe/probe/stats.py`` → ``["backprobe", "probe", "stats"]`` (a package's
    ``__init__`` is the package itself)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def floor_of(parts: list[str]) -> int:
    top = parts[1] if len(parts) > 1 else ""
    if top not in FLOORS:
        raise AssertionError(
            f"backprobe.{top} has no floor: add it to FLOORS here and to docs/design.md"
        )
    return FLOORS[top]


def imported(path: Path, src: Path = SRC) -> list[tuple[int, list[str], str | None]]:
    """(line, imported module as parts, enclosing function's name) for each import of a
    backprobe module in ``path``, relative imports resolved."""
    here = dotted(path, src)
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, list[str], str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inside = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inside = child.name
            if isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                target = base + (child.module.split(".") if child.module else [])
                names = [[]] if child.module else [[a.name] for a in child.names]
                found.extend((child.lineno, target + name, inside) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, a.name.split("."), inside) for a in child.names)
            visit(child, inside)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return [(line, target, fn) for line, target, fn in found if target[0] == "backprobe"]


def upward_imports(src: Path = SRC) -> list[str]:
    """One line per import of a higher floor, outside the methods that may reach up."""
    problems = []
    for path in modules(src / "backprobe"):
        floor = floor_of(dotted(path, src))
        for line, target, function in imported(path, src):
            target_floor = floor_of(target)
            if target_floor > floor and function not in MAY_REACH_UP:
                problems.append(
                    f"{path.relative_to(src)}:{line} (floor {floor}) imports "
                    f"{'.'.join(target)} (floor {target_floor})"
                )
    return problems


def test_no_module_imports_from_a_higher_floor() -> None:
    assert upward_imports() == []


def test_every_top_level_module_has_a_floor() -> None:
    for path in modules():
        floor_of(dotted(path))  # raises for a module nobody placed


def test_the_floor_check_finds_an_upward_import(tmp_path: Path) -> None:
    """A planted upward import (relative, inside a function) is found; the same kind of
    import inside ``_repr_html_`` is allowed, and so is a downward one."""
    store = tmp_path / "backprobe" / "store"
    store.mkdir(parents=True)
    (tmp_path / "backprobe" / "__init__.py").write_text("")
    (store / "__init__.py").write_text("from ..errors import BackprobeError\n")
    (store / "view.py").write_text(
        "def findings(run):\n"
        "    from ..diagnose.rules import diagnose\n"
        "    return diagnose(run)\n\n"
        "class View:\n"
        "    def _repr_html_(self):\n"
        "        from ..report.html import render_report\n"
        "        return render_report(self)\n"
    )
    assert upward_imports(tmp_path) == [
        "backprobe/store/view.py:2 (floor 1) imports backprobe.diagnose.rules (floor 3)"
    ]


def repeated_blocks(files: list[Path], root: Path = SRC) -> list[str]:
    """Pairs of files where the same ``REPEAT_LINES`` non-blank lines (compared without
    leading and trailing whitespace; a module's imports left out, they are no logic)
    stand twice, not overlapping: the first such place of each pair of files, as
    ``a.py:LINE ~ b.py:LINE``."""
    places: dict[tuple[str, ...], list[tuple[Path, int, int]]] = defaultdict(list)
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        numbered = [
            (n, text.strip())
            for n, text in enumerate(lines, 1)
            if text.strip() and not text.startswith(("import ", "from "))
        ]
        for i in range(len(numbered) - REPEAT_LINES + 1):
            window = tuple(text for _, text in numbered[i : i + REPEAT_LINES])
            places[window].append((path, i, numbered[i][0]))
    first_repeat: dict[tuple[Path, Path], str] = {}
    for found in places.values():
        for (path_a, i_a, line_a), (path_b, i_b, line_b) in itertools.pairwise(found):
            if path_a == path_b and i_b - i_a < REPEAT_LINES:
                continue  # overlapping windows of one run of identical lines
            first_repeat.setdefault(
                (path_a, path_b),
                f"{path_a.relative_to(root)}:{line_a} ~ {path_b.relative_to(root)}:{line_b}",
            )
    return sorted(first_repeat.values())


def test_no_block_of_six_lines_stands_twice_in_src() -> None:
    assert repeated_blocks(modules()) == []


@pytest.mark.parametrize("gap", [0, 3])
def test_the_repeat_check_finds_a_planted_copy(tmp_path: Path, gap: int) -> None:
    block = "\n".join(f"    total += values[{k}] * weights[{k}]" for k in range(REPEAT_LINES))
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(f"def f(values, weights):\n    total = 0\n{block}\n    return total\n")
    b.write_text("x = 1\n" * gap + f"def g(values, weights):\n{block}\n")
    assert repeated_blocks([a, b], tmp_path) == [f"a.py:3 ~ b.py:{gap + 2}"]
    one_short = "\n".join(block.splitlines()[: REPEAT_LINES - 1])
    b.write_text(f"def g(values, weights):\n{one_short}\n")
    assert repeated_blocks([a, b], tmp_path) == []
    a.write_text("x = 1\n" * (REPEAT_LINES + 1))  # one run of identical lines: no copy
    assert repeated_blocks([a], tmp_path) == []
