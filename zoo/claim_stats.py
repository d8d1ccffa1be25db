"""What a claim result records beside its per-seed values: sample spreads, Student-t intervals of
the mean, and the environment a rerun compares against (``zoo reproduce`` writes all three)."""

from __future__ import annotations

import math
import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.version_info import git, git_commit, zoo_version

__all__ = ["CONFIDENCE", "Interval", "environment", "fmt", "mean_interval", "sample_std", "summary"]

CONFIDENCE = 0.95


def sample_std(values: Any) -> float:
    """Sample standard deviation (ddof 1) over seeds; NaN for fewer than two values (no spread to estimate)."""
    arr = np.asarray(values, dtype=float).ravel()
    return float(np.std(arr, ddof=1)) if arr.size > 1 else float("nan")



# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof 1) and the Student-t confidence interval of the mean over ``n`` seeds."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "nan"
        if self.n == 1:
            return f"{self.mean:.4g}"
        return f"{self.mean:.4g} ± {self.std:.2g} [{self.lo:.4g}, {self.hi:.4g}]"


def mean_interval(values: Any, confidence: float = CONFIDENCE) -> Interval:
    """``mean ± t_{(1+c)/2, n-1} * s / sqrt(n)`` over the finite values (NaN = not logged); no interval below n = 2."""
    from scipy import stats

    arr = np.asarray(values, dtype=float).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    mean, std = float(arr.mean()), sample_std(arr)
    if n == 1:
        return Interval(mean, std, float("nan"), float("nan"), 1)
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


def summary(values: list[float]) -> str:
    """``mean ± std [lo, hi]`` of a metric over seeds (sample std, 95 % t-interval of the mean)."""
    return str(mean_interval(values))


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4g}"


# ---------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """What a rerun needs to compare against: package versions, CPU, torch threads, platform, date (UTC)."""
    import lightning

    return {
        "zoo": zoo_version(),
        "git_commit": git_commit(),
        "git_dirty": None if (status := git("status", "--porcelain", "--untracked-files=no")) is None else bool(status),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "executable": sys.executable,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
