# All metadata lives in pyproject.toml. This file names the cffi extension, tags
# the wheel for the stable ABI, and keeps the build script out of the wheel.
from setuptools import setup
from setuptools.command.build_py import build_py


class build_py_without_build_script(build_py):
    """The wheel ships the compiled extension, not the script that builds it
    (MANIFEST.in keeps the script in the sdist, which needs it)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) != ("fastrnn", "_cffi_build")]


setup(
    cffi_modules=["src/fastrnn/_cffi_build.py:ffibuilder"],
    cmdclass={"build_py": build_py_without_build_script},
    # cffi compiles its API-mode modules with Py_LIMITED_API and setuptools names
    # them *.abi3.so; this tags the wheel cp39-abi3, so one wheel per platform
    # serves every CPython from 3.9 on.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
