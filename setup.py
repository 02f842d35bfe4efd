"""The one compiled module, pipeline.core.candle_kernel (the candle fold's loop).

Everything else is declared in pyproject.toml. The extension is optional: where
Cython or a C compiler is missing the install goes on, and the fold runs its plain
Python loop, which computes the same (`fxstream worker` logs which one runs).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # e.g. pip install --no-build-isolation without Cython
    extensions = []
else:
    extensions = cythonize(
        [Extension("pipeline.core.candle_kernel", ["pipeline/core/candle_kernel.pyx"],
                   # IEEE arithmetic exactly as Python's floats: no fused multiply-add
                   extra_compile_args=["-O2", "-ffp-contract=off"], optional=True)],
        language_level=3, quiet=True)

setup(ext_modules=extensions)
