"""Quantization: int8 of SlimPajama bundles within a task-accuracy budget (slimpajama.py, with the candidate
scoring `slim` reuses), of any ONNX model (any_model.py), of the caption decoder (describe.py), calibration
data (calibration.py), fp16 for GPUs (fp16.py) and ORT's integer arithmetic per CPU (int8_arith.py).
"""
