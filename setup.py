"""Build the cffi C core; metadata lives in pyproject.toml.

The wheel is tagged abi3 (cp310) because the extension uses only the limited
C API.
"""

from setuptools import setup

setup(
    cffi_modules=["csrc/build_ffi.py:ffibuilder"],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
