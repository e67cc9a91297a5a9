"""Encoded image bytes -> pixels on the CPU, and image headers read without decoding.

Takes: the bytes of one image (a JPEG or PNG from a shard; any source file at prepare time).
Gives: its header (format, size; a JPEG's colour model and precision) without decoding it; HWC uint8 pixels of
the whole image, or of only a crop box, decoded at a reduced DCT scale when the box will be shrunk.
GPU decoding (``data.decode: gpu``) is a loader path: loading/gpu_decode.py.

    header.py         every image header is parsed here: read_header, image_size, the JPEG frame (SOFn)
    cpu.py            decode, decode_box (only the crop, DCT-reduced), DecodeError: OpenCV and libjpeg-turbo
    jpeg_region.py    the ctypes loader of _jpeg_region.c: libjpeg-turbo decodes only a region's rows and columns
    _jpeg_region.c    the native helper, built by setup.py when a C compiler and libjpeg's headers are there
"""
