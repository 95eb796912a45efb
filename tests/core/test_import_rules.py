"""The three layers import only downward, and no module imports one that imports it back.

Read from the syntax trees of every module, imports inside functions included, so a lazy import
cannot hide a dependency: llama_shared (the core) imports no framework and no layer above it; each
twin imports neither the other twin nor the application layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("llama_shared", "llama_flax", "llama_torch", "llama_twin")
# Every folder of Python code in the repository, for the import-cycle check.
TREE = PACKAGES + ("benchmarks", "conversion", "scripts", "tests")
FRAMEWORKS = ("jax", "jaxlib", "flax", "optax", "orbax", "torch")
FORBIDDEN = {
    "llama_shared": FRAMEWORKS + ("llama_flax", "llama_torch", "llama_twin"),
    "llama_flax": ("torch", "llama_torch", "llama_twin"),
    "llama_torch": ("jax", "jaxlib", "flax", "optax", "orbax", "llama_flax", "llama_twin"),
}
# The one core module allowed a framework: it turns tokenizer output into the tensors return_tensors
# asks for ("jax", "pt"), importing that framework only when asked.
ALLOWED = {"llama_shared/tokenizers/tensors.py": {"jax.numpy", "torch"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth; `from a import b`
    gives a.b where that is a module of the tree, else a."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((node.lineno, candidate if module_path(candidate) else base))
    return found


def module_path(name: str) -> Path | None:
    """The file of a module of this tree, or None."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def tree_files(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def forbidden_imports(package: str) -> list[str]:
    """'file:line imports module' for each import a package's layer may not make."""
    bad = []
    for path in tree_files(package):
        allowed = ALLOWED.get(path.relative_to(ROOT).as_posix(), set())
        for line, imported in imported_modules(path):
            root = imported.split(".")[0]
            if root in FORBIDDEN[package] and imported not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downward(package):
    assert forbidden_imports(package) == []


def test_the_allowed_exception_exists():
    """The allow-list names a real file with real framework imports (a stale entry would hide nothing)."""
    for relative, modules in ALLOWED.items():
        imported = {name for _, name in imported_modules(ROOT / relative)}
        assert modules <= imported, relative


def test_the_check_sees_a_lazy_framework_import(tmp_path, monkeypatch):
    """A torch import inside a function of a core module is reported (the check cannot pass vacuously)."""
    fake_root = tmp_path / "tree"
    (fake_root / "llama_shared").mkdir(parents=True)
    (fake_root / "llama_shared" / "__init__.py").write_text("")
    (fake_root / "llama_shared" / "sneaky.py").write_text("def f():\n    import torch\n    return torch\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    assert forbidden_imports("llama_shared") == ["llama_shared/sneaky.py:2 imports torch"]


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """module -> the modules of the tree it imports (anywhere in its body)."""
    graph = {}
    for path in files:
        graph[module_name(path)] = {name for _, name in imported_modules(path)
                                    if name.split(".")[0] in TREE and module_path(name)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, and self-imports (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph(tree_files(*TREE))) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
