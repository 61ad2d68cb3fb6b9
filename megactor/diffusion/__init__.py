"""Sampling over tensors: schedulers, multi-modal guidance, context windows.
Knows nothing of files, faces or the model's internals."""
