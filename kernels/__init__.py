"""Triton kernels of fastmbconv, installed as ``fastmbconv.kernels``.

One op per module: the ``@triton.jit`` kernel, its launcher, the torch-facing custom op and a
pure-torch ``*_ref`` twin. This package imports only torch and triton.
"""
