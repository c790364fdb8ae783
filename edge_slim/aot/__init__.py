"""Ahead-of-time code: model definition, training, export, quantization, TVM lowering.

Needs the [train] and/or [tvm] extras. Runtime code never imports this package.
"""
