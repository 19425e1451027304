"""The core stays readable: no function of the framework-free core (lwtakit/) or of the entry points (train.py,
analyze.py) is longer than 60 lines or takes more than 8 parameters (self/cls not counted; ``*args``/``**kwargs``
count as one each), measured on the AST.

Options travel as one object (a config dataclass) instead; the exceptions below say why they are exempt.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "lwtakit"
ENTRY_POINTS = (ROOT / "train.py", ROOT / "analyze.py")
MAX_LINES, MAX_PARAMS = 60, 8
EXEMPT = {
    # A Triton kernel's signature is its launch arguments: pointers, sizes and constexprs, no objects.
    ("lwta/triton.py", "_fwd_kernel"), ("lwta/triton.py", "_bwd_kernel"),
}


def shape_of(path: Path) -> list[tuple[str, int, int]]:
    """``(function name, lines, parameters)`` of every function and method in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            n = len(params) - (1 if params and params[0].arg in ("self", "cls") else 0)
            n += (a.vararg is not None) + (a.kwarg is not None)
            out.append((node.name, node.end_lineno - node.lineno + 1, n))
    return out


def test_no_core_function_is_too_long_or_takes_too_many_parameters():
    offenders = []
    for path in [*sorted(CORE.rglob("*.py")), *ENTRY_POINTS]:
        rel = path.relative_to(CORE if path.is_relative_to(CORE) else ROOT).as_posix()
        for name, lines, params in shape_of(path):
            if (rel, name) not in EXEMPT and (lines > MAX_LINES or params > MAX_PARAMS):
                offenders.append(f"{rel}:{name} ({lines} lines, {params} parameters)")
    assert not offenders, "split these or pass an options object:\n" + "\n".join(offenders)


def test_the_measure_counts_lines_and_parameters(tmp_path):
    src = tmp_path / "f.py"
    src.write_text("class A:\n    def m(self, a, b, *c, d=1, **e):\n        return 1\n")
    assert shape_of(src) == [("m", 2, 5)]
