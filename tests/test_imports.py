"""kit's imports run one way: the graph of every import in the package (module level and inside functions, read
with ast) has no cycle. A function-level import that reaches up a layer is a cycle all the same: it is how the
second release grew three of them."""
from __future__ import annotations

import ast
from pathlib import Path

import kit

ROOT = Path(kit.__file__).parent


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the kit modules it imports}; `from kit.a import b` counts kit.a.b when that is a module (else
    kit.a), and a module importing kit.a.b imports kit.a (its package runs first)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for name in names:
                if name in files and name != mod:
                    graph[mod].add(name)
                    parent = name.rpartition(".")[0]  # importing kit.a.b runs kit.a's __init__ first
                    while parent and parent in files and parent != mod and not mod.startswith(parent + "."):
                        graph[mod].add(parent)
                        parent = parent.rpartition(".")[0]
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_kit_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in kit: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "kit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import kit.b\n")
    (pkg / "b.py").write_text("def f():\n    from kit.a import x\n")
    (pkg / "c.py").write_text("from kit import a\n")
    assert cycles(import_graph(pkg)) == [["kit.a", "kit.b"]]


def test_the_package_itself_imports_no_step():
    """`import kit` is cheap (no torch) and lazy: kit.run and kit.load import their steps when first used, so the
    package's __init__ may import only kit.version at module level."""
    tree = ast.parse((ROOT / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    kit_imports = [n.module for n in top if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("kit")]
    assert kit_imports == ["kit.version"]
