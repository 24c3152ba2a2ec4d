"""The compiler: ONNX import, quantization, pre-quantized models, recipes, and the package it writes."""
