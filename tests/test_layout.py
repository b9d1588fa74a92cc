"""The house rules: the science library stands apart from the app and the peers, files stay
small, and the step order is written once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHELIX_CODE = ("schelix.module", "schelix.model", "schelix.train", "schelix.pipeline")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _under(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)}


def test_science_library_imports_neither_streamlit_nor_the_app() -> None:
    for path in (ROOT / "schelix").rglob("*.py"):
        bad = _under(_imports(path), ("streamlit", "studio", "pages"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_peers_do_not_import_schelix_training_and_scorer_model_do_not_import_peers() -> None:
    for path in (ROOT / "schelix" / "methods").glob("*.py"):
        bad = _under(_imports(path), (*SCHELIX_CODE, "schelix.data"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    for name in ("evaluate.py", "benchmarker.py", "model.py", "data.py", "train.py", "gate.py"):
        bad = _under(_imports(ROOT / "schelix" / name), ("schelix.methods",))
        assert not bad, f"schelix/{name} imports {bad}"
    for path in (ROOT / "schelix" / "module").glob("*.py"):
        assert not _under(_imports(path), ("schelix.methods",)), path


def test_the_registry_loads_without_schelix_training_code() -> None:
    code = (
        "import sys, schelix.methods, schelix.evaluate, schelix.model\n"
        "assert not [m for m in sys.modules if m.startswith('schelix.methods.')"
        " and m != 'schelix.methods.base'], sorted(sys.modules)\n"
        "assert 'schelix.pipeline' not in sys.modules\n"
        "from schelix.methods import get_method\n"
        "assert get_method('schelix').label == 'scHelix'  # loaded by name, on first lookup\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_file_over_400_lines() -> None:
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".git/", "tests/artifacts/")):
            continue
        n = len(path.read_text().splitlines())
        assert n <= 400, f"{rel} has {n} lines"


def test_step_order_is_written_once_and_everything_follows_it() -> None:
    from studio.steps import STEPS
    from studio.workspace import STEPS as WORK

    assert [s.key for s in STEPS if s.kept] == list(WORK)
    assert [s.key for s in STEPS].index("trajectory") < [s.key for s in STEPS].index("export")
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pages").glob("*.py"))
    assert sorted(s.page for s in STEPS) == pages  # every page is a step, every step a page
    for step in STEPS:  # no page numbers itself: the number comes from the list
        text = (ROOT / step.page).read_text()
        assert f'ui.setup("{step.key}")' in text and f'ui.title("{step.key}"' in text, step.page
        assert not re.search(r"st\.title\(", text), step.page
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"The sidebar\s+walks you through (.*?)\.", readme, re.S)
    assert line is not None
    assert [w.strip() for w in line.group(1).replace("\n", " ").split("→")] == [
        s.title for s in STEPS
    ]
