"""Build of fastattn's compiled extension.

One extension, ``fastattn._sdpa``: the Cython driver and the dispatcher are
compiled for baseline x86-64 (or the platform's baseline elsewhere); the kernel
source ``fa_attention_isa.c`` is compiled once more per instruction set with the
flags in ISA_FLAGS, and the import picks the best one the CPU runs. Never
a native-CPU ``-march``: the wheel must run on any x86-64.

Compilers: GCC and Clang get the vector kernels; MSVC (no vector extensions)
gets the same kernels in plain C, one lane wide (FA_PORTABLE in fa_simd.h).

Environment:
  FASTATTN_OPENMP=0    build without OpenMP (the kernels then run on one thread)
  FASTATTN_PORTABLE=1  the plain-C kernels with GCC/Clang too (how CI tests them)
  FASTATTN_DEBUG=1     Cython bounds checks on, -O0 -g
"""
import concurrent.futures
import os
import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_DIR = os.path.join("fastattn", "_kernels")
ISA_SOURCE = os.path.join(KERNEL_DIR, "fa_attention_isa.c")
DEBUG = os.environ.get("FASTATTN_DEBUG", "0") == "1"
WANT_OPENMP = os.environ.get("FASTATTN_OPENMP", "1") != "0"
PORTABLE = os.environ.get("FASTATTN_PORTABLE", "0") == "1"
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

# Per instruction set: (macro, GCC/Clang flags); x86-64 GCC/Clang builds only.
ISA_FLAGS = {
    "baseline": (None, []),
    "avx2": ("FA_BUILD_AVX2", ["-mavx2", "-mfma", "-mf16c"]),
    "avx512": ("FA_BUILD_AVX512",
               ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma",
                "-mf16c"]),
}


def _openmp_flags(compiler_type):
    """(compile, link) flags for OpenMP with this compiler."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if platform.system() == "Darwin":   # Apple clang: libomp (Homebrew), found via
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]   # CPPFLAGS / LDFLAGS
    return ["-fopenmp"], ["-fopenmp"]


class BuildExt(build_ext):
    """Chooses flags once the compiler is known and builds the per-ISA kernel objects."""

    def build_extension(self, ext):
        ctype = self.compiler.compiler_type
        unix_like = ctype != "msvc"
        opt = (["-O0", "-g"] if DEBUG else ["-O3"]) if unix_like else ["/O2"]
        common = opt + (["-ffp-contract=fast"] if unix_like else [])
        ext.extra_compile_args = list(common)
        ext.extra_link_args = []
        if WANT_OPENMP:
            compile_flags, link_flags = _openmp_flags(ctype)
            ext.extra_compile_args += compile_flags
            ext.extra_link_args += link_flags

        if PORTABLE:
            ext.define_macros.append(("FA_PORTABLE", "1"))
        isas = list(ISA_FLAGS) if (IS_X86_64 and unix_like and not PORTABLE) else ["baseline"]
        if len(isas) > 1:
            ext.define_macros.append(("FA_HAVE_X86_ISAS", "1"))
        def compile_isa(isa):
            macro, flags = ISA_FLAGS[isa]
            return self.compiler.compile(
                [ISA_SOURCE],
                output_dir=os.path.join(self.build_temp, "isa_" + isa),
                macros=ext.define_macros + ([(macro, "1")] if macro else []),
                include_dirs=ext.include_dirs,
                extra_postargs=common + flags,
                debug=self.debug,
            )

        # one compiler process per instruction set at once: each is a minute of
        # GCC on a 2-core machine, and they share nothing
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            ext.extra_objects = [obj for objects in pool.map(compile_isa, isas)
                                 for obj in objects]
        super().build_extension(ext)


extension = Extension(
    "fastattn._sdpa",
    sources=["fastattn/_sdpa.pyx", os.path.join(KERNEL_DIR, "fa_dispatch.c")],
    include_dirs=[np.get_include(), KERNEL_DIR],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    depends=[os.path.join(KERNEL_DIR, name) for name in os.listdir(KERNEL_DIR)],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": False,
            "initializedcheck": DEBUG,
            "cdivision": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
