"""The artifact: the ensemble and its loader, inference for serving, ONNX export, the Open Inference Protocol, checkpoints, the run directory and storage."""
