"""Compression steps: distillation into a smaller student, INT8 quantization."""
