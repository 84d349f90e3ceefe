"""Why the compiled extension ``fastattn._sdpa`` did not import, in words a user can act on.

Pure Python (it runs when the extension is missing). The usual case: ``pip install .``
and then ``python`` started in the checkout, where ``import fastattn`` finds the
source tree's ``fastattn/`` (no compiled module in it) before the installed package.
"""
import importlib.machinery
import os
import sys

BUILD_IN_PLACE = "`pip install -e .` or `python setup.py build_ext --inplace`"


def _installed_elsewhere(package_dir):
    """The installed fastattn's folder when it is not ``package_dir`` (else None)."""
    try:
        from importlib import metadata
        location = os.path.abspath(str(metadata.distribution("fastattn").locate_file("fastattn")))
    except Exception:       # no distribution, or metadata we cannot read: say nothing
        return None
    if os.path.isdir(location) and os.path.realpath(location) != os.path.realpath(package_dir):
        return location
    return None


def explain(error, package_dir):
    """The message for the ImportError ``error`` raised importing ``_sdpa`` from ``package_dir``."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    try:
        names = sorted(os.listdir(package_dir))
    except OSError:
        names = []
    built = [n for n in names if n.startswith("_sdpa.") and n.endswith((".so", ".pyd"))]
    loadable = [n for n in built if any(n == "_sdpa" + s for s in suffixes)]
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"

    if loadable:
        return (f"fastattn's compiled extension {os.path.join(package_dir, loadable[0])} "
                f"is there but failed to load ({error}). Rebuild it for this {python} and "
                f"NumPy: `pip install --force-reinstall --no-cache-dir fastattn`, or in a "
                f"source checkout {BUILD_IN_PLACE}.")
    if built:
        return (f"fastattn's compiled extension in {package_dir} was built for another "
                f"Python ({', '.join(built)}); this {python} needs _sdpa{suffixes[0]}. "
                f"Rebuild it with this Python: {BUILD_IN_PLACE} in a source checkout, "
                f"or reinstall fastattn.")
    if "_sdpa.pyx" in names:
        message = (f"fastattn's compiled extension `_sdpa` is not built in this directory "
                   f"({package_dir}): you are importing fastattn from its source tree. "
                   f"Either run Python outside the source tree to use the installed "
                   f"package, or build in place with {BUILD_IN_PLACE}.")
        installed = _installed_elsewhere(package_dir)
        if installed:
            message += f" (The installed package is at {installed}.)"
        return message
    return (f"fastattn's compiled extension `_sdpa` is missing from {package_dir}: the "
            f"installation is incomplete. Reinstall fastattn "
            f"(`pip install --force-reinstall fastattn`).")
