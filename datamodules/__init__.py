"""LightningDataModules (``zoo.datamodules``): the papers' benchmark loaders and the embedded defaults.

>>> from zoo.datamodules import DigitsDataModule, SplitTasks
"""

from zoo.datamodules.associative import AssociativeMemoryDataModule
from zoo.datamodules.bandits import BestArmDataModule
from zoo.datamodules.cifar import (
    CIFAR10DataModule,
    CIFAR10LTDataModule,
    CIFAR100DataModule,
    CIFAR100LTDataModule,
    CIFARDataModule,
)
from zoo.datamodules.completion import CompletionDataModule
from zoo.datamodules.continual import SplitTasks
from zoo.datamodules.contrastive import ContrastiveCIFARDataModule, ContrastiveDigitsDataModule
from zoo.datamodules.digits import DigitsDataModule
from zoo.datamodules.fair_rounds import FairRoundsDataModule
from zoo.datamodules.fair_stream import FairStreamDataModule
from zoo.datamodules.federated import (
    FederatedDataModule,
    PartitionedDataModule,
    dirichlet_partition,
    label_correlated_participation,
)
from zoo.datamodules.federated_mixture import FederatedMixtureDataModule
from zoo.datamodules.federated_regression import FederatedRegressionDataModule
from zoo.datamodules.federated_wls import FederatedWLSDataModule
from zoo.datamodules.foundation_digits import FoundationDigitsDataModule
from zoo.datamodules.least_squares import BCDDataModule
from zoo.datamodules.linear_systems import LinearSystemsDataModule
from zoo.datamodules.longtail import longtail_counts, longtail_indices
from zoo.datamodules.matching import MatchingDataModule
from zoo.datamodules.mip import MipDataModule
from zoo.datamodules.mixture import MarkovMixtureDataModule, MixtureDataModule, MixtureSampler
from zoo.datamodules.mogfn import ParetoGridDataModule
from zoo.datamodules.moons import MoonsDataModule
from zoo.datamodules.multicolor import MultiColorDigitsDataModule
from zoo.datamodules.multilabel import COCOPLTDataModule, MultiLabelDataModule, SyntheticPLTDataModule, VOCPLTDataModule
from zoo.datamodules.multimodal import CREMADDataModule, KineticsSoundsDataModule, MultimodalDigitsDataModule
from zoo.datamodules.paging import PagingDataModule
from zoo.datamodules.permutations import PermutationDataModule
from zoo.datamodules.rbc import ChulaRBC12DataModule, OverlappingCellsDataModule, ShuffledTailDigitsDataModule
from zoo.datamodules.sensing import SensingDataModule
from zoo.datamodules.subset import SubsetDataModule
from zoo.datamodules.tabular import SyntheticBinaryDataModule
from zoo.datamodules.tokens import SyntheticRouterScores, ZipfTokenDataModule
from zoo.datamodules.ufm import UFMDataModule
from zoo.datamodules.video import MovingDigitsDataModule, UCF101DataModule

__all__ = [
    "AssociativeMemoryDataModule",
    "BestArmDataModule",
    "BCDDataModule",
    "CompletionDataModule",
    "LinearSystemsDataModule",
    "MatchingDataModule",
    "MipDataModule",
    "MarkovMixtureDataModule",
    "MixtureDataModule",
    "MixtureSampler",
    "UFMDataModule",
    "MovingDigitsDataModule",
    "UCF101DataModule",
    "MoonsDataModule",
    "ParetoGridDataModule",
    "SensingDataModule",
    "SplitTasks",
    "MultiColorDigitsDataModule",
    "ChulaRBC12DataModule",
    "OverlappingCellsDataModule",
    "PagingDataModule",
    "PermutationDataModule",
    "ShuffledTailDigitsDataModule",
    "COCOPLTDataModule",
    "CREMADDataModule",
    "KineticsSoundsDataModule",
    "MultimodalDigitsDataModule",
    "MultiLabelDataModule",
    "SyntheticPLTDataModule",
    "VOCPLTDataModule",
    "CIFAR10DataModule",
    "CIFAR10LTDataModule",
    "CIFAR100DataModule",
    "CIFAR100LTDataModule",
    "CIFARDataModule",
    "ContrastiveCIFARDataModule",
    "ContrastiveDigitsDataModule",
    "DigitsDataModule",
    "FairRoundsDataModule",
    "FairStreamDataModule",
    "FederatedDataModule",
    "FederatedWLSDataModule",
    "FederatedMixtureDataModule",
    "FederatedRegressionDataModule",
    "PartitionedDataModule",
    "dirichlet_partition",
    "label_correlated_participation",
    "FoundationDigitsDataModule",
    "SyntheticBinaryDataModule",
    "SubsetDataModule",
    "SyntheticRouterScores",
    "ZipfTokenDataModule",
    "longtail_counts",
    "longtail_indices",
]
