"""Drop-in Lightning Callbacks (``zoo.callbacks``), one file per paper; each works on any LightningModule.

>>> from zoo.callbacks import DynamicEMA, NeuralCollapseMonitor, RobustnessEvaluation
"""

from zoo.callbacks.adab2n import AdaB2NCallback
from zoo.callbacks.aioli import AioliMixing
from zoo.callbacks.alf_lb import AuxFreeLoadBalancing
from zoo.callbacks.bids import BIDSSelection
from zoo.callbacks.continual import ContinualEvaluation
from zoo.callbacks.dynamic_ema import DynamicEMA, TaskEndEMA
from zoo.callbacks.neural_collapse import NeuralCollapseMonitor
from zoo.callbacks.one_step_rebalance import OneStepRebalance
from zoo.callbacks.robustness import RobustnessEvaluation
from zoo.callbacks.save_pretrained import SavePretrained
from zoo.callbacks.sbcl import SubclassClustering
from zoo.callbacks.stop_at_threshold import StopAtThreshold

__all__ = [
    "AdaB2NCallback",
    "AioliMixing",
    "AuxFreeLoadBalancing",
    "BIDSSelection",
    "ContinualEvaluation",
    "DynamicEMA",
    "NeuralCollapseMonitor",
    "OneStepRebalance",
    "RobustnessEvaluation",
    "StopAtThreshold",
    "SavePretrained",
    "SubclassClustering",
    "TaskEndEMA",
]
