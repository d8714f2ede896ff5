"""Builds the compiled reference kernel; everything else is configured in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "xentaudit._kernel",
            ["xentaudit/_kernel.c"],
            # IEEE operations and explicit fma only: no contraction, no reassociation, so the
            # compensated sums stay error-free and every instruction-set clone agrees.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-math-errno"],
            # Without a C compiler the install goes on without the kernel, and
            # xentaudit.reference computes the same formula in numpy ("float64-numpy").
            optional=True,
        )
    ]
)
