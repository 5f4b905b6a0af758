"""lorp_lightning: training-free depth pruning of causal LMs with LoRP, for PyTorch Lightning."""

__version__ = "0.1.0"
