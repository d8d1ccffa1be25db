"""Spurious Feature Diversification Improves Out-of-distribution Generalization (BANG).

Yong Lin, Lu Tan, Yifan Hao, Honam Wong, Hanze Dong, Weizhong Zhang, Yujiu Yang, Tong Zhang;
ICLR 2024; arXiv 2309.17230. Official code (MultiColorMNIST only, reference, not copied):
``linyongver/SpuriousFeatureDiversification``. WiSE-FT: Wortsman et al., arXiv 2109.01903,
``mlfoundations/wise-ft``.

Weight-space ensembles such as WiSE-FT, ``theta_alpha = (1 - alpha) theta_0 + alpha theta_1``,
generalise better out of distribution than either endpoint. The paper explains why: each model
leans on a different set of spurious features, and averaging dilutes every spurious feature's
weight relative to the shared invariant one. It shows the "FalseFalseTrue" phenomenon (examples
both endpoints get wrong but their average gets right), and that an over-confident endpoint
(large logit scale) dominates the average and cancels the gain. BANG (BAlaNced averaGing)
counters that over-confidence: fine-tune with Mixup and label smoothing, then apply WiSE-FT.

This module has the maths as pure functions, tested by hand:

* :func:`wise_ft` / :func:`weight_average`: WiSE-FT interpolation of state dicts (Eq. 1 of
  WiSE-FT; Sec. 2 of the paper), floating buffers interpolated too.
* :func:`false_false_true_ratio` and the :class:`FalseFalseTrueRatio` metric (Sec. 2, Fig. 1).
* :func:`mixup_label_smoothing_loss`: BANG's confidence-reducing fine-tuning loss (Sec. 5).
* :func:`logit_temperature`, :func:`balance_factors`, :func:`scale_head`: logit-temperature
  balancing, each model's logits divided by its in-distribution logit std (this zoo's CPU
  check; the paper's appendix "oracle" rescaling of the fine-tuned model's head).

:class:`BANGClassifier` trains ``K`` members (default 2) in one ``fit``, each on its own set of
spurious features of :class:`zoo.datamodules.multicolor.MultiColorDigitsDataModule` (or, with a timm
``backbone``, on images), and its test step logs every single member, their weight average, the
FalseFalseTrue ratio, the average with the last member made over-confident (logits x
``overconfidence``) and the temperature-balanced average: the paper's whole argument from one run.

Deviations and guesses (also in ``cards/bang/README.md``):

* The CPU check is "MultiColor digits": linear softmax members on digits pixels +
  noise and 32 one-hot colour patches, full-batch Adam, cross-entropy (the official MLP/MSE
  MultiColorMNIST run needs a download). Members see disjoint halves of the patches; the input
  weights of the patches a member does not see are zero and stay zero, so for linear members the
  weight average equals the logit average exactly (the paper's linear theory).
* Temperature = std of a member's logits on the ID validation split, measured after every
  (non-sanity) validation epoch; balancing rescales each member's head to the members' mean
  temperature before averaging. The paper's BANG uses Mixup + label smoothing instead; a CPU
  check measured that they do not balance linear members (OOD accuracy falls to 13-16 %), so
  they are flags (``mixup_alpha``, ``label_smoothing``), off in the CPU claim and on in
  ``full.yaml``. Mixup alpha 0.8 and label smoothing 0.1 there are timm's ImageNet defaults, not
  values verified in the paper.
* Full scale: the zero-shot CLIP head (text-derived) is not available from timm, so the "zero-shot"
  endpoint of ``full.yaml`` is a linear probe on the frozen pre-trained backbone
  (``probe_members``) and the other member is fine-tuned end to end from the same start.

>>> import torch
>>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 2.0])}
>>> wise_ft(a, b, 0.25)["w"]
tensor([1., 2.])
"""

from zoo.bang.maths import (
    FalseFalseTrueRatio,
    LogitTemperature,
    balance_factors,
    false_false_true_ratio,
    logit_temperature,
    mixup_label_smoothing_loss,
    scale_head,
    smoothed_one_hot,
    weight_average,
    wise_ft,
)
from zoo.bang.module import BANGClassifier

__all__ = [
    "BANGClassifier",
    "FalseFalseTrueRatio",
    "LogitTemperature",
    "balance_factors",
    "false_false_true_ratio",
    "logit_temperature",
    "mixup_label_smoothing_loss",
    "scale_head",
    "smoothed_one_hot",
    "weight_average",
    "wise_ft",
]
