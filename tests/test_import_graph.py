"""The import graph, computed from the code with ``ast``: no cycles (between modules, between the top-level
packages, between the subpackages of any package), and every import across packages allowed by the tables in
docs/architecture.md ("What imports what"). Imports under ``if TYPE_CHECKING:`` are left out (they never run);
imports inside functions count. ``from pkg import submodule`` is an edge to the submodule only."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protos", "strategies", "client", "server", "simulations")
MAY_IMPORT = "<!-- import rules: may import -->"
IMPORTED_ONLY_BY = "<!-- import rules: imported only by -->"

Graph = Mapping[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _imported_names(path: Path, module: str, modules: Mapping[str, Path]) -> set[str]:
    """The project modules ``module`` imports at run time."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_statement(other)
                continue
            visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*kept, *([node.module] if node.module else [])])
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(base)
        visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    return {name for name in found if name in modules and name != module}


def module_graph() -> dict[str, set[str]]:
    """Each product module and the product modules it imports."""
    modules = _modules()
    return {name: _imported_names(path, name, modules) for name, path in modules.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    nodes = sorted(set(graph) | {n for targets in graph.values() for n in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def collapsed(graph: Graph, prefix: str) -> dict[str, set[str]]:
    """The graph between the direct children of ``prefix`` (a package: its subpackages and modules)."""
    depth = len(prefix.split(".")) + 1

    def child(name: str) -> str | None:
        return ".".join(name.split(".")[:depth]) if name.startswith(prefix + ".") else None

    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        if (a := child(source)) is None:
            continue
        out.setdefault(a, set()).update(b for t in targets if (b := child(t)) is not None and b != a)
    return out


def _under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _dotted(name: str) -> str:
    """``server/app.py`` or ``client/`` as a module name."""
    return name.removesuffix(".py").rstrip("/").replace("/", ".")


def _rule_table(text: str, marker: str) -> dict[str, list[str]]:
    """The two-column table after ``marker``: first cell's name → the names in the second cell."""
    assert marker in text, f"docs/architecture.md lost its table {marker}"
    rows: dict[str, list[str]] = {}
    for line in text.split(marker, 1)[1].lstrip().splitlines():
        if not line.startswith("|"):
            break
        cells = line.split("|")[1:-1]
        names = [_dotted(n) for n in re.findall(r"`([^`]+)`", cells[0])]
        if names:
            rows[names[0]] = [_dotted(n) for n in re.findall(r"`([^`]+)`", cells[1])]
    return rows


def violations(graph: Graph, may_import: Mapping[str, list[str]],
               imported_only_by: Mapping[str, list[str]]) -> list[str]:
    """Imports the rules do not allow: across top-level packages, a module may import what the most specific row
    naming it (or its package) lists; a module in the second table is imported only by the importers it lists."""
    problems = []
    for source, targets in sorted(graph.items()):
        row = max((key for key in may_import if _under(source, [key])), key=len, default=None)
        for target in sorted(targets):
            if target.split(".")[0] != source.split(".")[0]:
                if row is None or not _under(target, may_import[row]):
                    problems.append(f"{source} imports {target}, which its row ({row}) does not allow")
            for guarded, importers in imported_only_by.items():
                if _under(target, [guarded]) and not _under(source, [guarded, *importers]):
                    problems.append(f"{source} imports {target}, which only {', '.join(importers)} may import")
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return module_graph()


def test_no_import_cycles_between_modules_packages_or_subpackages(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []
    top = {p: {t.split(".")[0] for s, ts in graph.items() if s.split(".")[0] == p for t in ts} - {p} for p in PACKAGES}
    assert cycles(top) == []
    packages = sorted({name for name in graph if (ROOT / name.replace(".", "/")).is_dir()})
    assert {"strategies", "strategies.codecs", "client.task", "client.task.kinds"} <= set(packages)
    for package in packages:
        assert cycles(collapsed(graph, package)) == [], package


def test_every_import_across_packages_is_allowed_by_the_architecture_page(graph: dict[str, set[str]]) -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    may_import = _rule_table(text, MAY_IMPORT)
    assert set(PACKAGES) <= set(may_import), "every top-level package has a row"
    assert violations(graph, may_import, _rule_table(text, IMPORTED_ONLY_BY)) == []


def test_the_checks_catch_a_planted_cycle_and_a_planted_forbidden_import(graph: dict[str, set[str]]) -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    may_import, only_by = _rule_table(text, MAY_IMPORT), _rule_table(text, IMPORTED_ONLY_BY)
    planted = {name: set(targets) for name, targets in graph.items()}
    planted["strategies.secagg.updates"].add("strategies.codecs.compeft.codec")  # codecs ↔ secagg again
    assert ["strategies.codecs", "strategies.secagg"] in cycles(collapsed(planted, "strategies"))
    planted = {name: set(targets) for name, targets in graph.items()}
    planted["server.round"].add("client.task.build")  # only server.app and server.run_config may build a task
    planted["strategies.fedavg"].add("server.checkpoint")
    planted["simulations.cli"].add("simulations.testing.tiny_model")
    found = "\n".join(violations(planted, may_import, only_by))
    assert "server.round imports client.task.build" in found
    assert "strategies.fedavg imports server.checkpoint" in found
    assert "simulations.cli imports simulations.testing.tiny_model" in found


def test_the_cli_checks_a_run_config_without_loading_the_training_stack() -> None:
    """What runs before anything slow starts (the CLI's parser, the run-config check, a task kind's data-columns)
    loads no model, adapter, data or DP library: importing them costs seconds on every ``fedsqueeze`` command."""
    import subprocess
    import sys

    heavy = ("peft", "transformers", "datasets", "flwr_datasets", "opacus", "rouge_score", "matplotlib")
    code = ("import sys\n"
            "from simulations.cli import build_parser\n"
            "from server.run_config import resolve\n"
            "build_parser().parse_args(['submit', '--insecure', '--run-config', 'adapter=vera'])\n"
            "resolve({'preset': 'sft', 'adapter': 'vera', 'data-columns': 'instruction=q,output=a'})\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
