"""The one native piece: data/decode/_jpeg_region.c (region-of-interest JPEG decoding, see data/decode/jpeg_region.py).

Everything else is in pyproject.toml. The extension is optional: without a C compiler or libjpeg's headers the
install goes on (setuptools prints the compiler error) and the crops decode whole images with OpenCV instead.
It is a plain C library loaded with ctypes, so it does not depend on the Python version's C API.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("resnet_repro.data.decode._jpeg_region", ["src/resnet_repro/data/decode/_jpeg_region.c"],
                             libraries=["jpeg"], extra_compile_args=["-O2"], optional=True)])
