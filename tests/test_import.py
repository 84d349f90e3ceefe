"""Importing fastattn where its compiled extension is missing says what happened and
what to do (the source tree after `pip install .`, a build for another Python, a
broken build), with the original ImportError chained."""
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastattn

PACKAGE = Path(fastattn.__file__).parent

# An editable install's finder (sys.meta_path) would find the checkout's build of
# fastattn._sdpa for the copied package: leave it out, as a plain install has none.
TRY_IMPORT = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
try:
    import fastattn
except ImportError as err:
    print("MESSAGE:", err)
    print("CAUSE:", repr(err.__cause__))
else:
    print("IMPORTED", fastattn.__file__)
"""


def python_sources(tmp_path, source_tree=True):
    """fastattn's Python files without the compiled module, in tmp_path/fastattn (with a
    `_sdpa.pyx`, as in a checkout, when ``source_tree``)."""
    target = tmp_path / "fastattn"
    target.mkdir()
    for path in PACKAGE.glob("*.py"):
        shutil.copy(path, target)
    if source_tree:
        (target / "_sdpa.pyx").write_text("# the Cython driver, never built here\n")
    return target


def import_from(directory):
    env = {**os.environ, "PYTHONPATH": str(directory)}
    result = subprocess.run([sys.executable, "-c", TRY_IMPORT], cwd=directory, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_source_tree_without_the_extension(tmp_path):
    package = python_sources(tmp_path)
    out = import_from(tmp_path)
    assert "IMPORTED" not in out
    assert (f"fastattn's compiled extension `_sdpa` is not built in this directory "
            f"({package}): you are importing fastattn from its source tree") in out
    assert "run Python outside the source tree to use the installed package" in out
    assert "`pip install -e .` or `python setup.py build_ext --inplace`" in out
    # the original error stays chained
    assert "CAUSE: ImportError(\"cannot import name '_sdpa'" in out


def test_installed_package_without_the_extension(tmp_path):
    package = python_sources(tmp_path, source_tree=False)
    out = import_from(tmp_path)
    assert f"compiled extension `_sdpa` is missing from {package}" in out
    assert "CAUSE: ImportError" in out


def test_extension_built_for_another_python(tmp_path):
    package = python_sources(tmp_path)
    (package / "_sdpa.cpython-39-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    out = import_from(tmp_path)
    assert (f"fastattn's compiled extension in {package} was built for another Python "
            f"(_sdpa.cpython-39-x86_64-linux-gnu.so)") in out
    assert "CAUSE: ImportError" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF loader messages")
def test_extension_that_fails_to_load(tmp_path):
    package = python_sources(tmp_path)
    broken = package / ("_sdpa" + importlib.machinery.EXTENSION_SUFFIXES[0])
    broken.write_bytes(b"not a shared object")
    out = import_from(tmp_path)
    assert f"fastattn's compiled extension {broken} is there but failed to load" in out
    assert "CAUSE: ImportError" in out


# torch is optional: `import fastattn` must not import it (nor pay for it), and
# `import fastattn.torch` without it says which extra to install
TORCH_OPTIONAL = """
import sys
import fastattn
print("TORCH IMPORTED:", "torch" in sys.modules)
sys.modules["torch"] = None          # as if torch were not installed
try:
    import fastattn.torch
except ImportError as err:
    print("MESSAGE:", err)
"""


def test_fastattn_imports_torch_only_for_fastattn_torch():
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    result = subprocess.run([sys.executable, "-c", TORCH_OPTIONAL], cwd=PACKAGE.parent, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "TORCH IMPORTED: False" in result.stdout
    assert "MESSAGE: fastattn.torch needs torch: pip install 'fastattn[torch]'" in result.stdout
