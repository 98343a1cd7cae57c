"""The package's import layers: every module imports only its own stage and the stages below.

    errors -> fileio / cli -> proto -> datasets -> netgen -> rules -> backends -> runs -> train
      -> encode -> hamming -> montage / plots -> metrics -> search -> codes / evaluation
      -> demo and the rest (the top)

(the pipeline's stages, proto -> datasets/netgen -> rules -> backends -> train -> encode ->
search/metrics -> tools, with the order inside a stage fixed so no two packages import each
other). Read with `ast`, nothing imported. Also: a function-level import of a package module
(which hid an import cycle before) is allowed only inside backends/ and pycaffe/, which load an
engine on demand; `caffe` and `torch` are imported only inside backends/; no module loads a package module
by name through importlib except the backend loader; no module is much over 450 lines.
"""
import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dlbhc_caffe"
STAGES = [
    {"errors"},
    {"fileio", "cli"},
    {"proto"},
    {"datasets"},
    {"netgen"},
    {"rules"},
    {"backends"},
    {"runs"},
    {"train"},
    {"encode"},
    {"hamming"},
    {"montage", "plots"},
    {"metrics"},
    {"search"},
    {"codes", "evaluation"},
]
TOP = len(STAGES)  # demo, and any new top-level module until it is placed above
ENGINES = {"caffe", "torch"}
ENGINE_UNITS = {"backends", "pycaffe"}  # load an engine on demand (pycaffe: the torch one as `caffe`)
MAX_LINES = 472  # "about 450": 5% slack
LONG_MODULES = {  # path below dlbhc_caffe: why it may be longer, for now
    "proto/dlbhc_caffe_pb2.py": "protoc's generated schema module",
}


def stage(unit):
    for rank, names in enumerate(STAGES):
        if unit in names:
            return rank
    return TOP


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        package = parts if rel.name == "__init__" else parts[:-1]
        yield path, ".".join(parts), package


def imports(path, package):
    """(lineno, absolute module name, at function level) of each import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(node) for fn in ast.walk(tree)
              if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, id(node) in nested
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[:len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            if node.module is None or node.level and not node.module:
                for alias in node.names:  # `from . import x`: x may be a module
                    yield node.lineno, f"{module}.{alias.name}", id(node) in nested
            else:
                yield node.lineno, module, id(node) in nested


def unit(module):
    """The stage unit of a package module: its first component below dlbhc_caffe."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@functools.lru_cache(maxsize=1)
def all_imports():
    """(where, module, imported module, at function level) of every import, read once."""
    return tuple((f"{path.relative_to(PACKAGE.parent)}:{lineno}", module, target, nested)
                 for path, module, package in modules()
                 for lineno, target, nested in imports(path, package))


def test_every_module_imports_only_its_stage_or_below():
    wrong = []
    for where, module, target, _ in all_imports():
        if not target.startswith("dlbhc_caffe.") or unit(target) == unit(module):
            continue
        if stage(unit(target)) > stage(unit(module)):
            wrong.append(f"{where}: {module} (stage {stage(unit(module))}) imports {target} "
                         f"(stage {stage(unit(target))})")
        elif stage(unit(target)) == stage(unit(module)):
            wrong.append(f"{where}: {module} imports {target}, a sibling of its own stage: "
                         "place one of them above the other in STAGES")
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_only_where_an_engine_loads():
    wrong = [f"{where}: {target} imported inside a function (import it at the top; only "
             f"backends/ loads modules on demand)"
             for where, module, target, nested in all_imports()
             if nested and target.startswith("dlbhc_caffe") and unit(module) not in ENGINE_UNITS]
    assert not wrong, "\n".join(wrong)


def test_caffe_and_torch_are_imported_inside_backends_only():
    wrong = [f"{where}: imports {target}" for where, module, target, _ in all_imports()
             if target.split(".")[0] in ENGINES and unit(module) != "backends"]
    assert not wrong, "\n".join(wrong)


def test_no_hidden_imports_by_name():
    wrong = []
    for path, module, _ in modules():
        if unit(module) == "backends":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not wrong, "importlib.import_module outside backends/: " + ", ".join(wrong)


@pytest.mark.parametrize("name", ["errors", "proto", "rules", "encode", "runs"])
def test_known_units_have_a_stage(name):
    assert stage(name) < TOP


def test_no_module_is_much_over_450_lines():
    long = []
    for path, _, _ in modules():
        rel = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and rel not in LONG_MODULES:
            long.append(f"{rel}: {lines} lines")
    assert not long, "split along its seams: " + ", ".join(long)
