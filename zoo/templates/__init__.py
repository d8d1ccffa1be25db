"""Shared LightningModule shapes that entries subclass, so entries of one kind read alike.

>>> from zoo.templates import ClassifierModule, ContinualClassifier, FederatedModule, OnlineModule, SolverModule
"""

from zoo.templates.classifier import ClassifierModule, classification_metrics
from zoo.templates.continual import ContinualClassifier
from zoo.templates.federated import FederatedModule
from zoo.templates.online import OnlineAlgorithm, OnlineModule
from zoo.templates.solver import SolverModule

__all__ = ["ClassifierModule", "ContinualClassifier", "FederatedModule", "OnlineAlgorithm", "OnlineModule", "SolverModule", "classification_metrics"]
