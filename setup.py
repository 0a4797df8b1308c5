# The C core is built by cffi when the package is installed (csrc/build.py).
from setuptools import setup

setup(cffi_modules=["csrc/build.py:ffibuilder"])
