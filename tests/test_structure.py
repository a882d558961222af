"""The shape of the code: one-way dependencies, no import cycles, every module documented."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(import_graph)


def test_dependencies_run_one_way_without_cycles() -> None:
    graph = import_graph.import_graph()
    assert import_graph.violations(graph) == []
    # The rule holds for real: the library uses the loaders, never the other way.
    assert any(dst.startswith("pipelines.") for dst in graph["hyperiqa.runtime"])
    assert not any(dst.startswith("hyperiqa") for src in graph if src.startswith("pipelines.")
                   for dst in graph[src])  # fmt: skip


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pipelines.loader import PatchBatch\n")
    assert import_graph.imports_of(source, "hyperiqa.m", {"pipelines.loader"}) == {
        "pipelines.loader"
    }
    graph = {"pipelines.a": {"hyperiqa.b"}, "hyperiqa.b": {"pipelines.a"}}
    problems = import_graph.violations(graph)
    assert any("pipelines must not depend on hyperiqa" in p for p in problems)
    assert any(p.startswith("import cycle among: hyperiqa.b, pipelines.a") for p in problems)


def test_the_layout_page_lists_every_module_and_only_files_that_exist() -> None:
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    files = [p for p in import_graph.project_modules().values() if p.name != "__init__.py"]
    files += [*(ROOT / "scripts").glob("*.sh"), ROOT / "hyperiqa" / "__init__.py"]
    missing = [str(p.relative_to(ROOT)) for p in files if str(p.relative_to(ROOT)) not in layout]
    assert missing == []
    block = layout[layout.index("```\n") + 4 : layout.rindex("```")]
    listed = [line.split()[0] for line in block.splitlines() if line.strip()]
    assert len(listed) > 50
    assert [path for path in listed if not (ROOT / path).exists()] == []


def test_nothing_names_files_outside_the_repository() -> None:
    """The product stands alone: no sibling folders a user does not have."""
    outside = ["../" + "shared", "DESIGN" + ".md"]  # spelled apart: this file is checked too
    top = ["README.md", "Makefile", "requirements.txt", "pyproject.toml", ".ci/run"]
    files = [*(ROOT / name for name in top), *ROOT.glob("*/*.py"), *ROOT.glob("*.py")]
    files += sorted((ROOT / "docs").glob("*.md"))
    assert len(files) > 60 and ROOT / "docs" / "gpu.md" in files
    for path in [*files, *(ROOT / "scripts").glob("*.sh")]:
        text = path.read_text(encoding="utf-8")
        assert not [name for name in outside if name in text], path
