"""The method and the model code, without Ray: boosting math, method axes, combination rules, metrics,
models, data, the training engine, the ensemble artifact and its inference. Needs PyTorch alone."""
