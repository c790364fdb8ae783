"""Ahead-of-time code, one subpackage per concept:

    model/     SlimPajama: the network, its training on generated scenes, export to a bundle, model card
    quantize/  int8 (SlimPajama bundles and any ONNX model) and fp16, within an accuracy budget
    slim/      pruning, distillation and the choice of a candidate on the size/error/latency frontier
    lower/     the TVM compile pipeline: ONNX rewrites, graph passes, CPU schedule rules, integer kernels

Needs the [train], [quantize] and/or [tvm] extras. Runtime code never imports this package.
"""
