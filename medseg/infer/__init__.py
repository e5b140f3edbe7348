"""Infer stage: run trained networks on new volumes (PyTorch, ONNX Runtime or OpenVINO)."""
