"""Shared LightningModule shapes that entries subclass, so entries of one kind read alike.

>>> from zoo.templates import ClassifierModule, ContinualClassifier, FederatedModule, SolverModule
"""

from zoo.templates.classifier import ClassifierModule, classification_metrics
from zoo.templates.continual import ContinualClassifier
from zoo.templates.federated import FederatedModule
from zoo.templates.solver import SolverModule

__all__ = ["ClassifierModule", "ContinualClassifier", "FederatedModule", "SolverModule", "classification_metrics"]
