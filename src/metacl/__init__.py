"""metacl: continual learning seen from meta-learning, on PyTorch."""

__version__ = "0.1.0"
