"""Shared LightningModule shapes that entries subclass, so entries of one kind read alike.

>>> from zoo.templates import ClassifierModule, ContinualClassifier, SolverModule
"""

from zoo.templates.classifier import ClassifierModule, classification_metrics
from zoo.templates.continual import ContinualClassifier
from zoo.templates.solver import SolverModule

__all__ = ["ClassifierModule", "ContinualClassifier", "SolverModule", "classification_metrics"]
