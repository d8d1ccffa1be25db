"""The smooth and composite problems of the BCD entry, their synthetic data and reference optima.

Paper: Nutini, Laradji, Schmidt, arXiv 1712.08859 (least squares, logistic regression and the lasso of
its experiments). Each problem keeps ``z = A x`` so a gradient costs one ``A^T`` product, and gives the
constants the selection rules need: coordinate Lipschitz constants ``L_i`` and block bounds ``H_b``.
:func:`reference_solution` computes ``f*`` with an independent solver (least squares:
``numpy.linalg.lstsq``; logistic: full Newton to gradient norm 1e-12; lasso: scikit-learn's ``Lasso``
at tol 1e-14).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PROBLEMS", "Lasso", "LeastSquares", "Logistic", "Problem", "make_problem", "make_problem_data", "reference_solution"]

PROBLEMS = ("least_squares", "logistic", "lasso")


class Problem:
    """``f(x)`` on data ``A (m x n)``; keeps ``z = A x`` so the gradient is one ``A^T`` product."""

    name = ""
    smooth = True

    def __init__(self, a: np.ndarray, b: np.ndarray, lam: float = 0.0) -> None:
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64).reshape(-1)
        self.lam = float(lam)
        self.m, self.n = self.a.shape
        self.col_sq = (self.a**2).sum(0)
        self._gram: np.ndarray | None = None

    @property
    def gram(self) -> np.ndarray:
        if self._gram is None:
            self._gram = self.a.T @ self.a
        return self._gram

    def value(self, x: np.ndarray) -> float:
        return self.value_z(self.a @ x, x)

    def grad(self, x: np.ndarray) -> np.ndarray:
        return self.grad_z(self.a @ x, x)

    # per-problem: value_z, grad_z, coordinate_lipschitz, block_bound (H_b >= Hessian), block_hessian
    def block_lipschitz(self, idx: np.ndarray) -> float:
        """``L_b = lambda_max(H_b)`` of the block's constant Hessian bound."""
        return float(np.linalg.eigvalsh(self.block_bound(idx))[-1])

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def block_hessian(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.block_bound(idx)


class LeastSquares(Problem):
    """``f(x) = 1/2 ||A x - b||^2``; ``L_i = ||A_i||^2``, ``H_b = A_b^T A_b`` (exact)."""

    name = "least_squares"

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        r = z - self.b
        return 0.5 * float(r @ r)

    def grad_z(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.a.T @ (z - self.b)

    def grad_block_z(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.a[:, idx].T @ (z - self.b)

    def coordinate_lipschitz(self) -> np.ndarray:
        return self.col_sq.copy()

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        return self.gram[np.ix_(idx, idx)]


class Logistic(Problem):
    """``f(x) = sum_i log(1 + exp(-y_i a_i^T x)) + lam/2 ||x||^2`` with ``y`` in {-1, +1}.

    ``L_i = ||A_i||^2 / 4 + lam``; ``H_b = A_b^T A_b / 4 + lam I`` bounds the block Hessian everywhere;
    the exact block Hessian is ``A_b^T diag(s (1 - s)) A_b + lam I``.
    """

    name = "logistic"

    def __init__(self, a: np.ndarray, b: np.ndarray, lam: float = 1.0) -> None:
        super().__init__(a, np.where(np.asarray(b) > 0, 1.0, -1.0), lam)

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        return float(np.logaddexp(0.0, -self.b * z).sum()) + 0.5 * self.lam * float(x @ x)

    def _sig(self, z: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(0.5 * self.b * z))  # sigmoid(y z), stable

    def grad_z(self, z: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.a.T @ (-self.b * (1.0 - self._sig(z))) + self.lam * x

    def grad_block_z(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return self.a[:, idx].T @ (-self.b * (1.0 - self._sig(z))) + self.lam * x[idx]

    def coordinate_lipschitz(self) -> np.ndarray:
        return self.col_sq / 4.0 + self.lam

    def block_bound(self, idx: np.ndarray) -> np.ndarray:
        return self.gram[np.ix_(idx, idx)] / 4.0 + self.lam * np.eye(len(idx))

    def block_hessian(self, z: np.ndarray, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        s = self._sig(z)
        ab = self.a[:, idx]
        return (ab * (s * (1.0 - s))[:, None]).T @ ab + self.lam * np.eye(len(idx))


class Lasso(LeastSquares):
    """``F(x) = 1/2 ||A x - b||^2 + lam ||x||_1``: ``grad`` is the smooth part's; updates are proximal."""

    name = "lasso"
    smooth = False

    def value_z(self, z: np.ndarray, x: np.ndarray) -> float:
        return super().value_z(z, x) + self.lam * float(np.abs(x).sum())


def make_problem(name: str, a: np.ndarray, b: np.ndarray, lam: float) -> Problem:
    """The problem called ``name`` (one of :data:`PROBLEMS`) on data ``A = a``, ``b``."""
    if name == "least_squares":
        return LeastSquares(a, b)
    if name == "logistic":
        return Logistic(a, b, lam)
    if name == "lasso":
        return Lasso(a, b, lam)
    raise ValueError(f"problem must be one of {PROBLEMS}, got {name!r}")


def make_problem_data(
    problem: str = "least_squares", n_samples: int = 300, n_features: int = 50, scale_sigma: float = 0.5,
    nonzeros: int = 10, noise: float = 0.1, seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic data with heterogeneous Lipschitz constants (where greedy rules gain most): Gaussian ``A``
    with log-normal column scales (heterogeneous ``L_i``),
    a ``nonzeros``-sparse ``x*``; ``b = A x* + noise`` (regression) or ``1[A x* + noise > 0]`` (logistic)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_samples, n_features)) * np.exp(scale_sigma * rng.standard_normal(n_features))
    x_star = np.zeros(n_features)
    support = rng.choice(n_features, size=min(nonzeros, n_features), replace=False)
    x_star[support] = rng.standard_normal(len(support))
    z = a @ x_star
    if problem == "logistic":
        z = z / max(z.std(), 1e-12)
        return a, (z + noise * rng.standard_normal(n_samples) > 0).astype(np.float64)
    return a, z + noise * rng.standard_normal(n_samples)


def reference_solution(problem: Problem) -> tuple[np.ndarray, float]:
    """``(x*, f*)`` from an independent solver (see the module notes)."""
    if isinstance(problem, Lasso):
        from sklearn.linear_model import Lasso as SkLasso

        model = SkLasso(alpha=problem.lam / problem.m, fit_intercept=False, tol=1e-14, max_iter=200_000)
        model.fit(problem.a, problem.b)
        x = model.coef_.astype(np.float64)
    elif isinstance(problem, Logistic):
        x = np.zeros(problem.n)
        for _ in range(100):  # full Newton with backtracking
            z = problem.a @ x
            g = problem.grad_z(z, x)
            if np.linalg.norm(g) < 1e-12 * max(1.0, problem.m):
                break
            h = problem.block_hessian(z, x, np.arange(problem.n))
            d = -np.linalg.solve(h, g)
            step, f0 = 1.0, problem.value_z(z, x)
            while problem.value(x + step * d) > f0 + 1e-4 * step * float(g @ d) and step > 1e-10:
                step *= 0.5
            x = x + step * d
    else:
        x = np.linalg.lstsq(problem.a, problem.b, rcond=None)[0]
    return x, problem.value(x)
