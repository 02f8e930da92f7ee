"""The code's shape: the runtime loads packages without the exporter's libraries, and no module imports form a cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgeinfer"
EXPORT_ONLY = ("onnx", "tqdm", "onnxruntime.quantization", "edgeinfer.export", "torch", "transformers", "gguf")


def test_a_cpu_load_and_generation_import_nothing_the_exporter_needs(preset_pkg):
    script = (
        "import json, sys, edgeinfer\n"
        f"edgeinfer.load({str(preset_pkg)!r}).generate('Hi', max_new_tokens=2)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    heavy = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in EXPORT_ONLY)]
    assert heavy == [], heavy


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """edgeinfer module -> edgeinfer modules it imports anywhere in its body (lazy imports inside functions too)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            # Only module-level dependencies count: "from .x import y" names module x, or module x.y when y is one.
            for target in candidates:
                if target in modules and target != name:
                    graph[name].add(target)
                    break
    return graph


def test_no_import_cycles_even_through_lazy_imports():
    graph = import_graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ importing its own submodules is how packages present themselves, not a cycle.
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert real == [], " ; ".join(" -> ".join(c) for c in real)


def test_the_runtime_never_imports_the_exporter():
    graph = import_graph()
    runtime = [m for m in graph if not m.startswith(("edgeinfer.export", "edgeinfer.bench", "edgeinfer.cli"))]
    leaks = {m: sorted(t for t in graph[m] if t.startswith("edgeinfer.export")) for m in runtime}
    assert {m: t for m, t in leaks.items() if t} == {}
