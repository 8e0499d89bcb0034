"""Declarative YAML-to-model image-classification pipeline."""

__version__ = "0.1.0"
