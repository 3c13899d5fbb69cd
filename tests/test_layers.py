"""The house in layers: entry points -> run -> concerns -> foundation, checked by import-linter
(contracts in setup.cfg), so a new feature cannot quietly add a back-edge or an import circle."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("task", "prepare", "doctor", "lr_find", "generate", "review")


def lint_imports(cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """lint-imports of the venv this test runs in, on the tree at `cwd` (its setup.cfg)."""
    command = pathlib.Path(sys.executable).parent / "lint-imports"
    return subprocess.run([str(command), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def test_every_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout and "BROKEN" not in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> pathlib.Path:
    """trainer/, deploy/ and the contracts, copied so a test can break them."""
    copy = tmp_path_factory.mktemp("house")
    for folder in ("trainer", "deploy"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    return copy


@pytest.mark.parametrize("module, back_edge, contract", [
    # data reaching up into the run, hidden inside a function as the old cycles were
    ("trainer/data/blocks.py", "def _hidden():\n    from trainer.run import inputs  # noqa\n",
     "trainer: entry points -> run -> concerns -> foundation"),
    # a concern importing an entry point's module (the doctor once took task.parse_flags)
    ("trainer/diagnosis/preflight.py", "from trainer import task  # noqa\n",
     "trainer: entry points -> run -> concerns -> foundation"),
    # one family of audit checks using another
    ("trainer/diagnosis/audit/leakage.py", "from trainer.diagnosis.audit import duplicates  # noqa\n",
     "audit: one module per family of checks"),
])
def test_a_back_edge_breaks_the_build(tree_copy, module, back_edge, contract):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + "\n\n" + back_edge)
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_concerns_import_no_run_and_no_entry_point():
    """The check anyone can run: python -c "import trainer.data, trainer.model"."""
    code = ("import sys, trainer.data, trainer.model, trainer.training.checkpoints, trainer.diagnosis, "
            "trainer.evaluation, trainer.reporting; print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                            timeout=120).stdout.split()
    trainer_modules = [m for m in loaded if m.startswith("trainer.")]
    assert "trainer.data.pipeline" in trainer_modules  # it did import the concerns
    assert not [m for m in trainer_modules if m.startswith("trainer.run")], trainer_modules
    assert not [m for m in trainer_modules if m.removeprefix("trainer.") in ENTRY_POINTS + ("cli",)]


def test_imports_inside_functions_say_why():
    """An import of a trainer module inside a function hides a dependency (it was how the old
    import circles were dodged): each one must carry a comment on its line saying why."""
    silent = []
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                names = ([inner.module or ""] if isinstance(inner, ast.ImportFrom) else
                         [a.name for a in inner.names] if isinstance(inner, ast.Import) else [])
                if any(n == "trainer" or n.startswith("trainer.") for n in names) and \
                        "#" not in lines[inner.lineno - 1]:
                    silent.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    assert not silent, f"imports of trainer modules inside functions, with no comment saying why: {silent}"
