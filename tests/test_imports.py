"""The import graph stays one-way (issue 21): contract <- data, models, ... <- jobs <- launch.

Every .py file under the project's packages is parsed (nothing is imported), and every import
statement is read, module-level and inside functions alike, relative imports resolved. `from A
import b` is an edge to the module A.b where that is a module of the project, else to A. The tests
fail naming the modules and lines on:

- an import cycle between modules;
- a two-way dependency between the top-level packages (with `ib_jax.contract` counted as its own
  package, since it is the layer both sides share) or between the parts of `ib_jax` (its
  subpackages and top-level modules: contract, models, convert, train, eval, decode, ...);
- `data_pipelines` importing anything of `ib_jax` but `ib_jax.contract`, `ib_jax` importing
  `data_pipelines` outside the job modules (`JOBS`);
- `ib_jax.contract` importing anything of the project, or loading an ML framework (jax, numpy...);
- the model side (models, decode, convert, eval.metrics) reaching `data_pipelines`, even through
  other modules;
- a project import inside a function that is not in `FUNCTION_IMPORTS_ALLOWED` with its reason.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("ib_jax", "data_pipelines", "launch", "configs", "benchmarks")

# (importer, imported) -> why the import is inside a function. Keep it short: an import inside a
# function hides a dependency from the reader, so each one needs a reason a reader accepts.
FUNCTION_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("data_pipelines.sources", "data_pipelines.tfds_data"): "tensorflow_datasets (heavy, "
    "optional) is imported only for a `tfds` entry",
}
# Modules whose function-level imports are all allowed, with the reason.
LIGHT_MODULES: dict[str, str] = {
    "ib_jax": "`import ib_jax` runs before every `ib_jax.contract` import (data workers, config "
    "files): its API functions (load_pretrained, generate, ...) import the models, jax and flax "
    "only when called",
}

# Programs that sit on top of the layers they check, although they live in a package's folder:
# each is its own unit in the package checks, and nothing in the project may import it.
PROGRAMS: dict[str, str] = {
    "ib_jax.evaluate": "`python -m ib_jax.evaluate`, the documented alias of the eval job's "
    "program (ib_jax/eval/__main__.py)",
}
# A package's `__main__` (`python -m ib_jax.convert`) is its program, not its library: like
# PROGRAMS, it may import any layer and is a unit of its own.

# The job layer: the only modules of ib_jax that wire data to the model (import data_pipelines).
JOBS = ("ib_jax.train", "ib_jax.eval", "ib_jax.evaluate", "ib_jax.predict", "ib_jax.validate")

# The model side: nothing here may reach data_pipelines, directly or through other modules.
MODEL_SIDE = ("ib_jax.models", "ib_jax.decode", "ib_jax.convert", "ib_jax.eval.metrics")


@dataclasses.dataclass(frozen=True)
class Import:
    """One import statement's edge: `importer` (a project module) imports `imported`."""

    importer: str
    imported: str  # a project module, or the dotted name of an outside one
    line: int
    in_function: bool
    project: bool  # whether `imported` is a module of the project

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.importer}:{self.line} imports {self.imported}{where}"


def project_modules() -> dict[str, str]:
    """Dotted module name -> file path, for every .py under ROOTS (packages by their __init__)."""
    found = {}
    for root in ROOTS:
        for directory, subdirs, files in os.walk(os.path.join(REPO, root)):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            package = os.path.relpath(directory, REPO).replace(os.sep, ".")
            for name in sorted(f for f in files if f.endswith(".py")):
                module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
                found[module] = os.path.join(directory, name)
    return found


def _package_of(module: str, path: str) -> str:
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return True
    return False


def scan(modules: dict[str, str]) -> list[Import]:
    """Every import edge of every project module."""
    edges = []
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importer's package
                    package = _package_of(module, path).split(".")
                    package = package[: len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            inside = _in_function(node, parents)
            for target in dict.fromkeys(targets):
                resolved = _project_module(target, modules)
                edges.append(
                    Import(module, resolved or target, node.lineno, inside, resolved is not None)
                )
    return edges


def _project_module(name: str, modules: dict[str, str]) -> str | None:
    """The deepest project module `name` (a module or a name inside one) refers to."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return scan(project_modules())


def _project_edges(graph: list[Import]) -> list[Import]:
    return [e for e in graph if e.project and e.imported != e.importer]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _out_edges(graph: list[Import]) -> dict[str, list[Import]]:
    out: dict[str, list[Import]] = collections.defaultdict(list)
    for edge in _project_edges(graph):
        out[edge.importer].append(edge)
    return out


def _paths_from(start: str, out: dict[str, list[Import]]) -> dict[str, Import]:
    """Breadth-first from `start`: each reached module -> the edge it was first reached by (so
    following those edges back gives a shortest chain). `start` is in it only on a cycle."""
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in out[node]:
                if edge.imported not in came:
                    came[edge.imported] = edge
                    following.append(edge.imported)
        frontier = following
    return came


def _chain(came: dict[str, Import], start: str, end: str) -> list[Import]:
    chain = [came[end]]
    while chain[-1].importer != start:
        chain.append(came[chain[-1].importer])
    return chain[::-1]


def _cycles(graph: list[Import]) -> list[list[Import]]:
    """One shortest cycle through each module that is on one, each set of modules once."""
    out, found, seen = _out_edges(graph), [], set()
    for start in sorted(out):
        came = _paths_from(start, out)
        if start in came:
            cycle = _chain(came, start, start)
            if frozenset(e.importer for e in cycle) not in seen:
                seen.add(frozenset(e.importer for e in cycle))
                found.append(cycle)
    return found


def test_the_scan_sees_the_project(graph):
    # Guards the other tests against passing on an empty or mis-resolved graph.
    modules = project_modules()
    assert len(modules) > 100 and all(root in modules for root in ROOTS)
    edges = {(e.importer, e.imported) for e in graph}
    assert ("data_pipelines.text", "ib_jax.contract.batch") in edges
    assert ("ib_jax.train.trainer", "ib_jax.models.instructblip") in edges


def test_relative_imports_resolve(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    for name in ("__init__.py", "top.py", "sub/__init__.py", "sub/other.py"):
        (package / name).write_text("")
    (package / "sub" / "mod.py").write_text(
        "from . import other\nfrom .. import top\nfrom ..top import thing\n"
        "def f():\n    from .other import x\n"
    )
    modules = {
        "pkg": str(package / "__init__.py"),
        "pkg.top": str(package / "top.py"),
        "pkg.sub": str(package / "sub" / "__init__.py"),
        "pkg.sub.other": str(package / "sub" / "other.py"),
        "pkg.sub.mod": str(package / "sub" / "mod.py"),
    }
    found = [(e.imported, e.line, e.in_function) for e in scan(modules) if e.project]
    assert found == [
        ("pkg.sub.other", 1, False),
        ("pkg.top", 2, False),
        ("pkg.top", 3, False),
        ("pkg.sub.other", 5, True),
    ]


def test_no_import_cycle(graph):
    cycles = _cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(
        "  " + "  ->  ".join(str(edge) for edge in cycle) for cycle in cycles
    )


def _is_program(module: str) -> bool:
    return module in PROGRAMS or module.endswith(".__main__")


def _top_unit(module: str) -> str:
    # The contract is the layer both packages share: a package of its own for this check.
    if _is_program(module):
        return module
    return "ib_jax.contract" if _within(module, "ib_jax.contract") else module.split(".")[0]


def _ib_jax_unit(module: str) -> str | None:
    if not _within(module, "ib_jax"):
        return None
    return module if _is_program(module) else ".".join(module.split(".")[:2])


def _two_way(graph: list[Import], unit) -> list[str]:
    between: dict[tuple[str, str], Import] = {}
    for edge in _project_edges(graph):
        a, b = unit(edge.importer), unit(edge.imported)
        if a is not None and b is not None and a != b:
            between.setdefault((a, b), edge)
    return [
        f"{a} <-> {b}: {between[a, b]}; {between[b, a]}"
        for a, b in sorted(between)
        if a < b and (b, a) in between
    ]


def test_no_two_way_dependency_between_packages(graph):
    found = _two_way(graph, _top_unit) + _two_way(graph, _ib_jax_unit)
    assert not found, "two-way dependencies (one import each way shown):\n  " + "\n  ".join(found)


def test_nothing_but_a_program_imports_a_program(graph):
    found = [
        str(e)
        for e in _project_edges(graph)
        if _is_program(e.imported) and not _is_program(e.importer)
    ]
    assert not found, "programs imported by the project:\n  " + "\n  ".join(found)


def test_data_pipelines_imports_only_the_contract_of_ib_jax(graph):
    found = [
        str(e)
        for e in graph
        if _within(e.importer, "data_pipelines")
        and e.importer not in PROGRAMS
        and _within(e.imported, "ib_jax")
        and not _within(e.imported, "ib_jax.contract")
    ]
    assert not found, "data_pipelines imports ib_jax beyond ib_jax.contract:\n  " + "\n  ".join(
        found
    )


def test_the_contract_is_a_leaf(graph):
    found = [
        str(e)
        for e in graph
        if _within(e.importer, "ib_jax.contract")
        and e.project
        and not _within(e.imported, "ib_jax.contract")
    ]
    assert not found, "ib_jax.contract imports the project:\n  " + "\n  ".join(found)


def test_the_contract_imports_light():
    # Data workers and config files import the contract: it must not pull in an ML framework.
    contract = sorted(m for m in project_modules() if _within(m, "ib_jax.contract"))
    heavy = ("jax", "flax", "numpy", "torch", "tensorflow", "grain", "orbax", "transformers")
    code = f"import sys\nimport {', '.join(contract)}\nprint(sorted(set({heavy!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", f"importing {contract} loads {done.stdout.strip()}"


def test_only_the_jobs_import_data_pipelines(graph):
    found = [
        str(e)
        for e in graph
        if _within(e.importer, "ib_jax")
        and _within(e.imported, "data_pipelines")
        and not any(_within(e.importer, job) for job in JOBS)
    ]
    assert not found, "ib_jax imports data_pipelines outside the jobs:\n  " + "\n  ".join(found)


def test_the_model_side_never_reaches_data_pipelines(graph):
    out, found = _out_edges(graph), []
    for start in sorted(m for m in out if any(_within(m, side) for side in MODEL_SIDE)):
        came = _paths_from(start, out)
        reached = sorted(m for m in came if _within(m, "data_pipelines"))
        if reached:  # the shortest chain to the first one
            found.append("  ->  ".join(str(e) for e in _chain(came, start, reached[0])))
    assert not found, "the model side reaches data_pipelines:\n  " + "\n  ".join(found)


def test_no_project_import_inside_a_function(graph):
    found = [
        str(e)
        for e in graph
        if e.in_function
        and e.project
        and (e.importer, e.imported) not in FUNCTION_IMPORTS_ALLOWED
        and e.importer not in LIGHT_MODULES
    ]
    assert not found, (
        f"{len(found)} project import(s) inside functions (move them to the top of the module, or "
        "add them to FUNCTION_IMPORTS_ALLOWED with the reason):\n  " + "\n  ".join(found)
    )


def test_every_allowed_function_import_exists(graph):
    # A stale entry would silently allow the import again later.
    present = {(e.importer, e.imported) for e in graph if e.in_function and e.project}
    assert set(FUNCTION_IMPORTS_ALLOWED) <= present, set(FUNCTION_IMPORTS_ALLOWED) - present
    assert set(LIGHT_MODULES) <= {importer for importer, _ in present}
