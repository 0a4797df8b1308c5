"""The shape of vionetd/ as a reader meets it (scripts/shape.py): short
classes and functions, and every module saying which process runs it."""
import ast
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_no_class_or_function_over_the_limits():
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "shape.py"),
                        str(ROOT / "vionetd")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout


def test_every_module_opens_with_the_process_that_runs_it():
    missing = []
    for path in sorted((ROOT / "vionetd").rglob("*.py")):
        if path.name.endswith("_pb2.py") or path.name == "__init__.py" and \
                path.parent.name == "vionetd":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if not doc.startswith("Run by "):
            missing.append("%s: %r" % (os.path.relpath(path, ROOT), doc[:60]))
    assert not missing, "\n".join(missing)
