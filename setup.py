"""Build script. Packages live in pyproject.toml's metadata; this file maps the top-level
``kernels/`` folder to ``fastmbconv.kernels`` (never a top-level ``kernels`` package: PyPI has
one) and builds the optional ``fastmbconv._C`` extension."""
from setuptools import setup


def extensions():
    """The compiled extension, when csrc/ has sources; empty otherwise."""
    return [], {}


ext_modules, cmdclass = extensions()

setup(
    packages=["fastmbconv", "fastmbconv.kernels"],
    package_dir={"fastmbconv": "fastmbconv", "fastmbconv.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
