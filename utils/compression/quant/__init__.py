"""INT8 quantization: post-training static quantization of exported ONNX files (ptq.py)."""
