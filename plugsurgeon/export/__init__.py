"""Exporting deployed models (ONNX)."""
