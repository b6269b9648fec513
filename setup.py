# All metadata lives in pyproject.toml; this file only names the cffi extension.
from setuptools import setup

setup(cffi_modules=["src/fastrnn/_cffi_build.py:ffibuilder"])
