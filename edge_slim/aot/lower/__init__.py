"""Lowering through TVM: the compile pipeline (pipeline.py), the image/text parts (split.py), ONNX rewrites
before import (onnx_rewrites.py), Relax graph passes (graph_passes.py), the tuning-free CPU schedule rules
(cpu_rules.py), integer kernels (int8_kernels.py) and optional MetaSchedule tuning (tuning.py). Needs [tvm].
"""
