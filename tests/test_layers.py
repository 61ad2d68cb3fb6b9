"""The package's layering rule, checked over every import in megactor/ (top level and inside functions):
a module imports only from its own package or from a lower floor."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# floor of each top-level part of megactor, highest first (README "Layout")
FLOORS = {
    "training": 4,
    "animate": 3, "curation": 3, "evaluation": 3,
    "diffusion": 2, "data": 2, "metrics": 2,
    "models": 1,
    "config": 0, "fileio": 0, "visualisation": 0,
}


def _imports(path: Path):
    """The megactor parts a module imports, as (line, part)."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]  # e.g. ("megactor", "data")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package[:len(package) - node.level + 1] + tuple((node.module or "").split("."))
            else:
                base = tuple((node.module or "").split("."))
            names = [base + (a.name,) for a in node.names] if base == ("megactor",) else [base]
        elif isinstance(node, ast.Import):
            names = [tuple(a.name.split(".")) for a in node.names]
        else:
            continue
        for name in names:
            if len(name) > 1 and name[0] == "megactor" and name[1]:
                yield node.lineno, name[1]


def test_every_import_goes_down_a_floor_or_stays_in_its_package():
    wrong, seen = [], set()
    for path in sorted((ROOT / "megactor").rglob("*.py")):
        own = path.relative_to(ROOT / "megactor").with_suffix("").parts[0]
        if own == "__init__":
            continue
        assert own in FLOORS, f"{path}: {own} has no floor in the layering rule"
        for line, part in _imports(path):
            seen.add(part)
            if part != own and FLOORS[part] >= FLOORS[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}, floor {FLOORS[own]}) imports {part} "
                             f"(floor {FLOORS[part]})")
    assert {"models", "data", "config"} <= seen  # the walk found the imports at all
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_names():
    private = [f"{p.relative_to(ROOT)}:{node.lineno} imports {a.name} from {node.module}"
               for p in sorted((ROOT / "megactor").rglob("*.py")) for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.ImportFrom) for a in node.names if a.name.startswith("_")]
    assert not private, "\n".join(private)


def test_entry_points_and_benchmarks_do_not_reach_into_training():
    """Only train.py drives the trainer; the benchmarks that time it (train_bench, model_bench) aside."""
    users = [p for p in [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("demo/*.py"),
                         *ROOT.glob("data_processing/*.py")]
             if any(part == "training" for _, part in _imports_anywhere(p))]
    assert sorted(p.relative_to(ROOT).as_posix() for p in users) == ["bench/train_bench.py", "train.py"]


def _imports_anywhere(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("megactor."):
            yield node.lineno, node.module.split(".")[1]
