"""SlimPajama itself, ahead of time: the network (slimpajama.py), its training on generated scenes (train.py,
data.py, torch_eval.py), export to an ONNX bundle with its model card (export.py, card.py), and the way back
from a bundle to a trainable network (from_bundle.py). Needs the [train] extra.
"""
