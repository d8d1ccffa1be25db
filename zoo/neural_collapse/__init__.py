"""Neural collapse in deep linear networks: the closed-form geometry, the NC metrics and the models.

Paper: *Neural Collapse in Deep Linear Networks: From Balanced to Imbalanced Data*, Dang, Tran,
Osher, Tran-The, Ho, Nguyen (ICML 2023), arXiv 2301.00437. Official code (reference only):
https://github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks.

At the end of training a classifier, the last-layer features of the training samples collapse to
their class means (NC1), the class means and the classifier rows settle into a fixed geometry
(NC2) and the two align (NC3, self-duality). With a last-layer bias and balanced classes the
geometry is the simplex equiangular tight frame (ETF); for a bias-free deep linear head trained
with MSE and weight decay on imbalanced data it is an orthogonal frame whose lengths follow the
class sizes. Split by concern:

- :mod:`zoo.neural_collapse.geometry`: the paper's closed form (``x_k``, ``s_k``) and the ETF target;
- :mod:`zoo.neural_collapse.metrics`: NC1-NC3 as pure functions and the torchmetrics
  :class:`NeuralCollapseMetrics` (exact under DDP);
- :mod:`zoo.neural_collapse.models`: the entry's ZooModules, :class:`DeepLinearUFM` and
  :class:`DeepLinearHeadClassifier`.

The drop-in callback that logs the metrics during any training run is
:class:`zoo.callbacks.neural_collapse.NeuralCollapseMonitor`.

>>> from zoo.neural_collapse import closed_form_relative_norms
>>> means, rows = closed_form_relative_norms([200, 100, 50, 50], depth=1, weight_decay=5e-4, feature_decay=5e-4)
>>> rows.round(3)
array([1.   , 0.703, 0.493, 0.493])
"""

from zoo.neural_collapse.geometry import (
    GEOMETRIES,
    ClosedForm,
    Geometry,
    closed_form,
    closed_form_relative_norms,
    closed_form_s,
    closed_form_x,
    etf_target,
    geometry_targets,
)
from zoo.neural_collapse.metrics import (
    NC_KEYS,
    NeuralCollapseMetrics,
    between_class_covariance,
    class_means,
    max_abs_cosine,
    nc1,
    nc1_from_means,
    nc2,
    nc3,
    neural_collapse,
    relative_sq_norms,
    within_class_covariance,
)
from zoo.neural_collapse.models import DeepLinearHeadClassifier, DeepLinearUFM

__all__ = [
    "GEOMETRIES",
    "NC_KEYS",
    "ClosedForm",
    "DeepLinearHeadClassifier",
    "DeepLinearUFM",
    "Geometry",
    "NeuralCollapseMetrics",
    "between_class_covariance",
    "class_means",
    "closed_form",
    "closed_form_relative_norms",
    "closed_form_s",
    "closed_form_x",
    "etf_target",
    "geometry_targets",
    "max_abs_cosine",
    "nc1",
    "nc1_from_means",
    "nc2",
    "nc3",
    "neural_collapse",
    "relative_sq_norms",
    "within_class_covariance",
]
