"""Shared LightningModule shapes that entries subclass, so entries of one kind read alike.

>>> from zoo.templates import ClassifierModule
"""

from zoo.templates.classifier import ClassifierModule, classification_metrics

__all__ = ["ClassifierModule", "classification_metrics"]
