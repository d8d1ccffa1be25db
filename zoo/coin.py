"""CoIN / LCIA (``coin``): the continual classifier the dynamic-balance EMA card trains.

Paper: *Large Continual Instruction Assistant*, Jingyang Qiao et al., ICML 2025, arXiv 2410.10868 (the
method is called LCIA in the paper, D-EMA here and "CoIN" after its repository). Official
code (reference only, MIT): https://github.com/JingyangQiao/CoIN (``CoIN/peft/tuners/lora.py``:
``ema_update``, ``ema_replace``).

While a model learns a sequence of instruction-tuning tasks, an exponential moving average
of its trainable weights keeps what earlier tasks taught, and at the end of each task the
average replaces the trained weights. The paper's contribution is the balance weight of that
average: instead of a fixed decay it is computed at every step and for every parameter
tensor from a second-order Taylor expansion of the loss around the average, with the
gradient as the first-order term and a finite difference of successive gradients standing in
for the Hessian: ``beta_t = 2 (1 + ||g_t||_1) / (||theta_t - theta*_{t-1}||_1 ||g_t - g_{t-1}||_1)``,
falling back to 0.01 where it leaves ``(0, 1)``. The averaging itself is the drop-in callback
:class:`zoo.callbacks.dynamic_ema.DynamicEMA`; this module is the classifier it is trained with.

Deviations from the paper, all named in the card:

- The paper fine-tunes LoRA adapters of LLaVA-1.5 (7B/13B) on eight multimodal instruction
  tasks (ScienceQA, TextVQA, ImageNet, GQA, VizWiz, RefCOCO grounding, VQAv2, OCR-VQA). The
  card's CPU check trains an MLP 64-256-10 with SGD on five Permuted Digits tasks
  (domain-incremental), one epoch per task; ``full.yaml`` is Split CIFAR-10 with a timm
  ResNet-18. The averaging rule is the official one, applied to all trainable weights
  instead of the LoRA matrices.
- The instruction router (TF-IDF similarity between a new task's instructions and stored
  ones, deciding whether to reuse an adapter or train a new one; ``instruct/LoRASelect.py``)
  is not implemented: there are no instructions and no adapters in a classifier, and every
  task here trains the same weights.
- Tasks switch between epochs inside one ``fit`` (:class:`zoo.datamodules.continual.SplitTasks`)
  rather than being separate runs; the callback restarts the average at every task end,
  which is what a separate run per task does in the official pipeline.
"""

from __future__ import annotations

from zoo.templates.continual import ContinualClassifier, Method

__all__ = ["CoINClassifier"]


class CoINClassifier(ContinualClassifier):
    """:class:`zoo.templates.continual.ContinualClassifier` with the ``coin`` card's defaults.

    An MLP 64-256-10 trained with plain SGD (lr 0.2, no momentum) by fine-tuning, the setting
    in which the card's CPU check measured the dynamic-balance EMA; add
    :class:`zoo.callbacks.dynamic_ema.DynamicEMA` to the Trainer for the method. Every argument is
    :class:`~zoo.templates.continual.ContinualClassifier`'s; only defaults differ (``lr``).

    >>> CoINClassifier().hparams["lr"]
    0.2
    """

    def __init__(
        self,
        backbone: str = "mlp",
        num_classes: int = 10,
        input_dim: int = 64,
        hidden_dims: list[int] | None = None,
        in_chans: int = 1,
        norm: str = "none",
        method: Method = "finetune",
        buffer_size: int = 0,
        replay_batch_size: int = 10,
        joint_forward: bool = False,
        lr: float = 0.2,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            input_dim=input_dim,
            hidden_dims=hidden_dims,
            in_chans=in_chans,
            norm=norm,
            method=method,
            buffer_size=buffer_size,
            replay_batch_size=replay_batch_size,
            joint_forward=joint_forward,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
        )
