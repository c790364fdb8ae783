"""Seeded CLEVR-like scenes (NumPy + Pillow only): generation, rendering, evaluation."""
