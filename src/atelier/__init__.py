"""atelier: train, archive, serve and watch an image classifier on Kubernetes."""

__version__ = "0.1.0"
