"""The one table of zoo entries: entry name -> paper, kind, import target and card folder.

Every test, the README table and ``zoo.load`` are driven from this table, so an entry
exists the day it is registered here and nowhere else.

Published identity: a hub folder or checkpoint names its class by (entry name, class name),
never by import path; :func:`resolve_module_class` maps that pair to the class through the
import paths listed here, so a file can move without breaking a published model. ZooModules
shared by several entries (templates, baselines) sit in :data:`SHARED_MODULES` and publish with
no entry. Class names are unique across both tables.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoo.errors import UnknownEntryError

__all__ = [
    "Entry",
    "SharedModule",
    "SHARED_MODULES",
    "list_entries",
    "get_entry",
    "entry_for_class",
    "module_identity",
    "resolve_module_class",
    "class_name",
    "CARDS_DIR",
    "import_object",
]

Kind = Literal["module", "callback", "loss", "optimizer", "algorithm"]
KINDS: tuple[str, ...] = ("module", "callback", "loss", "optimizer", "algorithm")

#: ``cards/`` sits beside the packages at the top of the repository.
CARDS_DIR = Path(__file__).resolve().parent.parent / "cards"


def import_object(path: str) -> object:
    """Import ``package.module.Name`` and return ``Name``."""
    module_name, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def class_name(path: str) -> str:
    """The class name an import path ends with: ``zoo.bcd.BCDModule`` -> ``BCDModule``."""
    return path.rpartition(".")[2]


@dataclass(frozen=True)
class Entry:
    """One paper in the zoo.

    ``target`` is the class the paper contributes (a loss, a callback, a module ...).
    ``module`` is the :class:`zoo.hub.ZooModule` that trains and publishes the entry; it is
    ``target`` itself when the paper's contribution is a LightningModule. ``extra_modules``
    are other ZooModules published under the entry (e.g. the full-scale recipe's model);
    ``zoo.load`` builds only classes named here.
    """

    name: str
    paper: str
    arxiv: str | None
    kind: Kind
    target: str
    card: str
    module: str | None = None
    summary: str = ""
    extra_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"entry {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def module_path(self) -> str:
        """Import path of the ZooModule that trains and publishes this entry."""
        return self.module or self.target

    @property
    def module_paths(self) -> tuple[str, ...]:
        """Every ZooModule class that may be published under this entry, the default first."""
        return (self.module_path, *self.extra_modules)

    @property
    def module_class_names(self) -> tuple[str, ...]:
        """The class names published under this entry (what ``config.json`` records), default first."""
        return tuple(class_name(p) for p in self.module_paths)

    @property
    def card_dir(self) -> Path:
        return CARDS_DIR / self.card

    def load_target(self) -> type:
        return import_object(self.target)  # type: ignore[return-value]

    def load_module_class(self, name: str | None = None) -> type:
        """The default ZooModule, or the one called ``name``.

        ``name`` is a class name or an import path; only its last component counts, so an old
        path recorded before a file move still finds the class where the registry now lists it.
        """
        if name is None:
            return import_object(self.module_path)  # type: ignore[return-value]
        for path in self.module_paths:
            if class_name(path) == class_name(name):
                return import_object(path)  # type: ignore[return-value]
        raise UnknownEntryError(f"entry {self.name!r} publishes {list(self.module_class_names)}, not {name!r}")

    @property
    def arxiv_url(self) -> str | None:
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None


_ENTRIES: tuple[Entry, ...] = (
    Entry(
        name="anyloss",
        paper="AnyLoss: Transforming Classification Metrics into Loss Functions",
        arxiv="2405.14745",
        kind="loss",
        target="zoo.anyloss.AnyLoss",
        module="zoo.anyloss.AnyLossClassifier",
        card="anyloss",
        summary="Any confusion-matrix metric (F1, G-mean, balanced accuracy) as a differentiable loss.",
    ),
    Entry(
        name="neural-collapse",
        paper="Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data",
        arxiv="2301.00437",
        kind="callback",
        target="zoo.callbacks.neural_collapse.NeuralCollapseMonitor",
        module="zoo.neural_collapse.DeepLinearUFM",
        extra_modules=("zoo.neural_collapse.DeepLinearHeadClassifier",),
        card="neural-collapse",
        summary="NC1-NC3 monitor for any model; the imbalanced deep-linear UFM and its closed form.",
    ),
    Entry(
        name="coin",
        paper="Large Continual Instruction Assistant (CoIN: dynamic-balance EMA)",
        arxiv="2410.10868",
        kind="callback",
        target="zoo.callbacks.dynamic_ema.DynamicEMA",
        module="zoo.coin.CoINClassifier",
        card="coin",
        summary="EMA weight averaging whose balance weight adapts per tensor and step; replaces weights at task ends.",
    ),
    Entry(
        name="adab2n",
        paper="Overcoming Recency Bias of Normalization Statistics in Continual Learning: Balance and Adaptation",
        arxiv="2310.08855",
        kind="module",
        target="zoo.adab2n.AdaB2N",
        module="zoo.adab2n.AdaB2NClassifier",
        card="adab2n",
        summary="BatchNorm with Bayesian task-balanced batch statistics and a tunable running-statistics momentum.",
    ),
    Entry(
        name="bang",
        paper="Spurious Feature Diversification Improves Out-of-distribution Generalization",
        arxiv="2309.17230",
        kind="algorithm",
        target="zoo.bang.BANGClassifier",
        card="bang",
        summary="Weight averaging of models with diverse spurious features (WiSE-FT), balanced by BANG's fine-tuning.",
    ),
    Entry(
        name="srat",
        paper="Imbalanced Adversarial Training with Reweighting (SRAT)",
        arxiv="2107.13639",
        kind="algorithm",
        target="zoo.srat.SRATModule",
        card="srat",
        summary="PGD adversarial training with deferred class reweighting and a feature-separation loss.",
    ),
    Entry(
        name="mtard",
        paper="Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher Adversarial Distillation",
        arxiv="2306.16170",
        kind="algorithm",
        target="zoo.mtard.MTARD",
        extra_modules=("zoo.mtard.TeacherClassifier",),
        card="mtard",
        summary="A student distilled from a clean and a robust teacher, balanced by entropy and loss normalisation.",
    ),
    Entry(
        name="convex-relu",
        paper="Efficient Global Optimization of Two-layer ReLU Networks: Quadratic-time Algorithms and Adversarial Training",
        arxiv="2201.01965",
        kind="algorithm",
        target="zoo.convex_relu.ConvexReLU",
        card="convex-relu",
        summary="Two-layer ReLU training as a convex program solved by ADMM, with its robust variant.",
    ),
    Entry(
        name="muon-tail",
        paper="Muon Outperforms Adam in Tail-End Associative Memory Learning",
        arxiv="2509.26030",
        kind="optimizer",
        target="zoo.muon_tail.AssociativeMemory",
        card="muon-tail",
        summary="A one-layer associative memory on heavy-tailed classes: Muon learns the tail, Adam does not.",
    ),
    Entry(
        name="sinkgd",
        paper="Gradient Multi-Normalization for Stateless and Scalable LLM Training (SinkGD)",
        arxiv="2502.06742",
        kind="optimizer",
        target="zoo.sinkgd.SinkGD",
        module="zoo.sinkgd.SinkGDClassifier",
        card="sinkgd",
        summary="A stateless optimizer: Sinkhorn-style alternating row and column normalization of each gradient.",
    ),
    Entry(
        name="alf-lb",
        paper="A Theoretical Framework for Auxiliary-Loss-Free Load Balancing of Sparse Mixture-of-Experts",
        arxiv="2512.03915",
        kind="callback",
        target="zoo.callbacks.alf_lb.AuxFreeLoadBalancing",
        module="zoo.alf_lb.TinyMoE",
        extra_modules=("zoo.alf_lb.SyntheticRouter",),
        card="alf-lb",
        summary="MoE router biases updated from observed loads after each step, no auxiliary loss.",
    ),
    Entry(
        name="bcd",
        paper="Let's Make Block Coordinate Descent Converge Faster: Faster Greedy Rules, Message-Passing, Active-Set Complexity, and Superlinear Convergence",
        arxiv="1712.08859",
        kind="algorithm",
        target="zoo.bcd.BlockCoordinateDescent",
        module="zoo.bcd.BCDModule",
        card="bcd",
        summary="Greedy block coordinate descent (Gauss-Southwell, GSL, variable blocks, Newton updates).",
    ),
    Entry(
        name="rbc",
        paper="Red Blood Cell Segmentation with Overlapping Cell Separation and Classification on Imbalanced Dataset",
        arxiv="2012.01321",
        kind="algorithm",
        target="zoo.rbc.RBCEllipseSegmenter",
        module="zoo.rbc.RBCClassifier",
        extra_modules=("zoo.rbc.SeparationCheck",),
        card="rbc",
        summary="Overlapping red cells split at concave points by directed ellipse fits; EfficientNet cell classifier with weight balancing.",
    ),
    Entry(
        name="sbcl",
        paper="Subclass-balancing Contrastive Learning for Long-tailed Recognition",
        arxiv="2306.15925",
        kind="loss",
        target="zoo.sbcl.SBCLLoss",
        module="zoo.sbcl.SBCLModule",
        card="sbcl",
        summary="Head classes re-clustered into tail-sized subclasses; a two-term contrastive loss balances subclasses, then a balanced probe.",
    ),
    Entry(
        name="comic",
        paper="Learning in Imperfect Environment: Multi-Label Classification with Long-Tailed Distribution and Partial Labels (COMIC)",
        arxiv="2304.10539",
        kind="module",
        target="zoo.comic.COMICModule",
        card="comic",
        summary="Head, tail and balanced branches with the multi-focal modifier loss, label corrector and head-tail balancer.",
    ),
    Entry(
        name="foundation-lt",
        paper="Rethinking the Bias of Foundation Model under Long-tailed Distribution",
        arxiv="2501.15955",
        kind="algorithm",
        target="zoo.foundation_lt.BackdoorAdjustedEnsemble",
        module="zoo.foundation_lt.LIFTFinetuner",
        extra_modules=("zoo.foundation_lt.BackdoorAdjustedEnsemble",),
        card="foundation-lt",
        summary="LIFT fine-tuning (cosine head, logit-adjusted loss) per foundation model, then a backdoor-adjusted ensemble.",
    ),
    Entry(
        name="arl",
        paper="Improving Multimodal Learning via Imbalanced Learning (ARL)",
        arxiv="2507.10203",
        kind="module",
        target="zoo.arl.ARL",
        module="zoo.arl.ARLClassifier",
        card="arl",
        summary="Shared-head unimodal losses and inverse-variance gradient re-weighting of each modality's encoder.",
    ),
    Entry(
        name="vididi",
        paper="ViDiDi: Unfolding Videos Dynamics via Taylor Expansion",
        arxiv="2409.02371",
        kind="module",
        target="zoo.vididi.ViDiDi",
        card="vididi",
        summary="Temporal-derivative views (orders 0-2) of clips through one encoder, balanced alternating pairs, on VICReg/BYOL/SimCLR.",
    ),
    Entry(
        name="ccl",
        paper="Counter-Current Learning: A Biologically Plausible Dual Network Approach for Deep Learning",
        arxiv="2409.19841",
        kind="module",
        target="zoo.ccl.CounterCurrentClassifier",
        extra_modules=("zoo.ccl.CounterCurrentAutoencoder",),
        card="ccl",
        summary="Anti-parallel forward and feedback nets trained by layer-local losses: no gradient crosses a layer.",
    ),
    Entry(
        name="ftwt",
        paper="Fire Together Wire Together: A Dynamic Pruning Approach with Self-Supervised Mask Prediction",
        arxiv="2110.08232",
        kind="module",
        target="zoo.ftwt.FTWTClassifier",
        card="ftwt",
        summary="Per-layer mask predictors trained on a self-supervised heatmap-mass target; FLOPs of the executed convolutions.",
    ),
    Entry(
        name="aioli",
        paper="Aioli: A Unified Optimization Framework for Language Model Data Mixing",
        arxiv="2411.05735",
        kind="callback",
        target="zoo.callbacks.aioli.AioliMixing",
        module="zoo.aioli.TinyGPT",
        card="aioli",
        summary="Online data-mixing proportions: a linear mixing law estimated during training, exponentiated-gradient updates.",
    ),
    Entry(
        name="bids",
        paper="Improving Influence-based Instruction Tuning Data Selection for Balanced Learning of Diverse Capabilities",
        arxiv="2501.12147",
        kind="algorithm",
        target="zoo.bids.BIDSSelector",
        module="zoo.bids.BIDSClassifier",
        card="bids",
        summary="LESS gradient influence, per-validation-instance z-score, iterative selection for the least-covered task.",
    ),
    Entry(
        name="lal",
        paper="Learning to Actively Learn: A Robust Approach",
        arxiv="2010.15382",
        kind="algorithm",
        target="zoo.lal.AdaptiveQueryPolicy",
        module="zoo.lal.LALModule",
        card="lal",
        summary="A best-arm query policy trained by REINFORCE against in-class adversaries, robust over difficulty classes.",
    ),
    Entry(
        name="afl",
        paper="Anarchic Federated Learning",
        arxiv="2108.09875",
        kind="algorithm",
        target="zoo.afl.AFACSStrategy",
        module="zoo.afl.AFLModule",
        card="afl",
        summary="AFA-CD / AFA-CS: K-normalised worker updates with two-sided rates; AFA-CS keeps every worker's last update.",
    ),
    Entry(
        name="admm-fl",
        paper="Noise-Robust and Resource-Efficient ADMM-based Federated Learning",
        arxiv="2409.13451",
        kind="algorithm",
        target="zoo.admm_fl.ADMMClients",
        module="zoo.admm_fl.ADMMFLModule",
        card="admm-fl",
        summary="Consensus ADMM for federated WLS under random scheduling and noisy links: dual-free local update, idle-client updates.",
    ),
    Entry(
        name="fedfix",
        paper="A General Theory for Federated Optimization with Asynchronous and Heterogeneous Clients Updates",
        arxiv="2206.10189",
        kind="algorithm",
        target="zoo.fedfix.FedFixStrategy",
        module="zoo.fedfix.FedFixModule",
        card="fedfix",
        summary="Sync / async FedAvg, FedBuff and FedFix as one aggregation rule with weights d_i; the surrogate optimum each one reaches.",
    ),
    Entry(
        name="aranyani",
        paper="Enhancing Group Fairness in Online Settings Using Oblique Decision Forests",
        arxiv="2310.11401",
        kind="algorithm",
        target="zoo.aranyani.ObliqueForest",
        module="zoo.aranyani.AranyaniModule",
        card="aranyani",
        summary="A soft oblique decision forest learned one sample at a time with node-level demographic-parity gradients from running group aggregates.",
    ),
    Entry(
        name="learning-to-relax",
        paper="Learning to Relax: Setting Solver Parameters Across a Sequence of Linear System Instances",
        arxiv="2310.02246",
        kind="algorithm",
        target="zoo.learning_to_relax.TsallisINF",
        module="zoo.learning_to_relax.LearningToRelaxModule",
        card="learning-to-relax",
        summary="Tsallis-INF bandits (plain and per-context-bin) choosing SOR's omega across a sequence of sparse linear systems.",
    ),
    Entry(
        name="paging",
        paper="Paging with Succinct Predictions",
        arxiv="2210.02775",
        kind="algorithm",
        target="zoo.paging.FollowThePrediction",
        module="zoo.paging.PagingModule",
        card="paging",
        summary=(
            "Paging with one predicted bit per request: follow-the-prediction (discard bits), marking-based robust and phase-prediction variants, "
            "Belady's OPT, a learned bit predictor."
        ),
    ),
    Entry(
        name="fair-one-sided",
        paper="Individually Fair Learning with One-Sided Feedback",
        arxiv="2206.04475",
        kind="algorithm",
        target="zoo.fair_one_sided.Exp2SemiBandit",
        module="zoo.fair_one_sided.FairOneSidedModule",
        card="fair-one-sided",
        summary=(
            "One-sided label feedback and an auditor panel reduced to a contextual semi-bandit: Exp2 and Context-Semi-Bandit-FTPL with phantom "
            "fairness losses, regret against the best fair policy (HiGHS LP)."
        ),
    ),
    Entry(
        name="stochastic-balance",
        paper="Online Matching with Stochastic Rewards: Advanced Analyses Using Configuration Linear Programs",
        arxiv="2309.10289",
        kind="algorithm",
        target="zoo.stochastic_balance.StochasticBalance",
        module="zoo.stochastic_balance.StochasticBalanceModule",
        card="stochastic-balance",
        summary=(
            "Stochastic Balance for online matching with stochastic rewards (argmax p psi(load)), Greedy / Ranking / Random baselines, the "
            "matching-LP bound with HiGHS."
        ),
    ),
    Entry(
        name="balans",
        paper="Balans: Multi-Armed Bandits-based Adaptive Large Neighborhood Search for Mixed-Integer Programming Problems",
        arxiv="2412.14382",
        kind="algorithm",
        target="zoo.balans.BalansSolver",
        module="zoo.balans.BalansModule",
        card="balans",
        summary="Bandit-driven ALNS for MIP (the balans package on SCIP), stepped one destroy-repair-accept-update iteration per training step.",
    ),
    Entry(
        name="matrix-sensing",
        paper="How Over-Parameterization Slows Down Gradient Descent in Matrix Sensing: The Curses of Symmetry and Initialization",
        arxiv="2310.01769",
        kind="module",
        target="zoo.matrix_sensing.MatrixSensingModule",
        card="matrix-sensing",
        summary=(
            "Factorised GD for matrix sensing (symmetric / asymmetric, exact / over-parameterised) and the one-step rebalance (OneStepRebalance) "
            "that restores the linear rate."
        ),
    ),
    Entry(
        name="altmin",
        paper="Low Rank Matrix Completion via Robust Alternating Minimization in Nearly Linear Time",
        arxiv="2302.11068",
        kind="algorithm",
        target="zoo.altmin.RobustAltMinCompletion",
        extra_modules=("zoo.altmin.ExactAltMin",),
        card="altmin",
        summary=(
            "Matrix completion by alternating minimisation with warm-started inexact least-squares steps (CG, sketch-preconditioned CG); exact AltMin baseline."
        ),
    ),
    Entry(
        name="mogfn",
        paper="Multi-Objective GFlowNets",
        arxiv="2210.12765",
        kind="module",
        target="zoo.mogfn.PreferenceConditionalGFlowNet",
        card="mogfn",
        summary=(
            "One preference-conditional GFlowNet (trajectory balance, omega ~ Dirichlet fed to the policy and log Z) against fixed-preference "
            "GFlowNets on the same budget; exact hypervolume, R2 and the true Pareto set by enumeration."
        ),
    ),
    Entry(
        name="permutations",
        paper="Exact Learning of Permutations for Nonzero Binary Inputs with Logarithmic Training Complexity",
        arxiv="2502.16763",
        kind="algorithm",
        target="zoo.permutations.PermutationEnsemble",
        card="permutations",
        summary=(
            "An ensemble of two-layer NTK networks trained on the k basis vectors (one batched tensor), averaged and rounded, is exact on all 2^k - "
            "1 nonzero binary inputs."
        ),
    ),
)


@dataclass(frozen=True)
class SharedModule:
    """A ZooModule that several entries build on (a template or a baseline) and that publishes
    with no entry: ``zoo fit --model <name>`` trains it, so ``zoo publish`` must take it too."""

    path: str
    summary: str

    @property
    def name(self) -> str:
        return class_name(self.path)

    def load(self) -> type:
        return import_object(self.path)  # type: ignore[return-value]


#: Shared ZooModules, by import path; ``config.json`` records only their class name.
SHARED_MODULES: tuple[SharedModule, ...] = (
    SharedModule(
        path="zoo.templates.continual.ContinualClassifier",
        summary="A continual-learning classifier (fine-tuning, ER or ER-ACE): the baseline of coin and adab2n.",
    ),
)


def list_entries(kind: str | None = None) -> list[Entry]:
    """All registered entries, optionally only those of one ``kind``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [e for e in _ENTRIES if kind is None or e.kind == kind]


def get_entry(name: str) -> Entry:
    """The entry called ``name``; an unknown name raises an error that suggests close ones."""
    for entry in _ENTRIES:
        if entry.name == name:
            return entry
    names = [e.name for e in _ENTRIES]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEntryError(f"unknown entry {name!r}{hint} (zoo list shows all {len(names)})")


def resolve_module_class(entry: str | None, name: str) -> type:
    """The ZooModule class a published identity names: an entry's class, or a shared one when
    ``entry`` is None. ``name`` may be a format-1 import path: its last component is used."""
    if entry is not None:
        return get_entry(entry).load_module_class(name)
    for shared in SHARED_MODULES:
        if shared.name == class_name(name):
            return shared.load()
    known = [s.name for s in SHARED_MODULES]
    raise UnknownEntryError(f"{name!r} is not a shared zoo module (shared: {known}); an entry's class needs its entry name")


def module_identity(cls: type) -> tuple[str | None, str]:
    """``(entry name or None for a shared module, class name)``: what ``config.json`` records.

    Only the exact class counts (a subclass is a different model); the check imports the one
    registered path with that class name and compares the objects.
    """
    for entry in _ENTRIES:
        for path in entry.module_paths:
            if class_name(path) == cls.__name__ and import_object(path) is cls:
                return entry.name, cls.__name__
    for shared in SHARED_MODULES:
        if shared.name == cls.__name__ and shared.load() is cls:
            return None, cls.__name__
    raise UnknownEntryError(
        f"{cls.__module__}.{cls.__qualname__} is not registered, so it cannot be published: list it in an entry's "
        f"module/extra_modules or in SHARED_MODULES (zoo/registry.py)"
    )


def entry_for_class(cls: type) -> Entry:
    """The entry whose ZooModule is ``cls`` (or a parent of it)."""
    for klass in cls.__mro__:
        for entry in _ENTRIES:
            if any(class_name(p) == klass.__name__ and import_object(p) is klass for p in entry.module_paths):
                return entry
    raise UnknownEntryError(f"{cls.__qualname__} is not the module of any registered entry")
