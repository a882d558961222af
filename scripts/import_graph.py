"""Print the project's import graph and check that dependencies run one way.

    python scripts/import_graph.py            # edges per module, then the verdict
    python scripts/import_graph.py --check    # verdict only; exit 1 on a violation

Every ``import`` statement counts, also those inside functions: a cycle kept
alive by a function-level import is still a cycle. The rule: entry points
(train.py, evaluate.py, predict.py, scripts/, bench/) may import ``hyperiqa``
and ``pipelines``; ``hyperiqa`` may import ``pipelines``; ``pipelines``
imports neither; and no module imports itself back through others.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("hyperiqa", "pipelines")  # in dependency order: a package may import later ones
# (importer package, imported package) pairs that break the one-way rule.
FORBIDDEN = {("pipelines", "hyperiqa")}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [*ROOT.glob("*.py")]
    for folder in (*LIBRARY, "bench", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return {module_name(f): f for f in files}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules ``path`` imports (module-level and function-level alike).

    bench/ and scripts/ are folders of scripts, not packages: a script there
    imports its neighbours by bare name (``import measure``), as Python finds
    them in the script's own folder.
    """
    package = name.rpartition(".")[0] if path.name != "__init__.py" else name
    folder = name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            if folder in ("bench", "scripts") and f"{folder}.{target.split('.')[0]}" in known:
                target = f"{folder}.{target}"
            # The longest known prefix: "pipelines.loader.PatchBatch" -> "pipelines.loader".
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in sorted(modules.items())}


def top(name: str) -> str:
    return name.split(".")[0]


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports against the one-way rule, and import cycles."""
    found = []
    for src, targets in graph.items():
        for dst in sorted(targets):
            if (top(src), top(dst)) in FORBIDDEN:
                found.append(f"{src} imports {dst}: pipelines must not depend on hyperiqa")
            elif top(src) in LIBRARY and top(dst) not in LIBRARY:
                found.append(f"{src} imports {dst}: the library must not depend on entry points")
    found += [f"import cycle among: {', '.join(c)}" for c in cycles(graph)]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others
    (strongly connected components of two or more, by Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="print only the verdict")
    args = parser.parse_args(argv)
    graph = import_graph()
    if not args.check:
        for src, targets in graph.items():
            if targets:
                print(f"{src} -> {', '.join(sorted(targets))}")
        print()
    problems = violations(graph)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(graph)} modules; dependencies run one way; no import cycles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
