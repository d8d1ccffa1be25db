"""Every LightningCLI recipe in ``cards/`` starts: one ``fast_dev_run`` batch on fixture data.

The paper-scale recipes (``full.yaml``, MTARD's ``full_teacher.yaml``, convex-relu's ``robust.yaml``)
and the CPU ones (``config.yaml``, ``baseline.yaml``, ``teacher.yaml``) are built with the same
LightningCLI users run. Only what must change for a CPU test is overridden, found from the YAML
itself: the data root (CIFAR files written in the real on-disk format by
``tests/datamodules/conftest.py``'s writers), ``download``, ``num_workers`` and batch sizes,
devices, ``fast_dev_run`` and the logger; MTARD's students get tiny teachers published into
``tmp_path`` first, and recipes whose one step is minutes of CPU get a smaller step (``HEAVY``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torchvision import datasets

from zoo.lightning_cli import build_lightning_cli

ROOT = Path(__file__).resolve().parents[2]
CARDS = ROOT / "cards"
SMALL_BATCH = 2
#: per-class images in the fixture's CIFAR-10 train split: CIFAR-10-LT at ratio 100 keeps one image of the last class
CIFAR10_TRAIN_PER_CLASS = 100

#: Recipes whose one step takes tens of seconds on one CPU thread: the smallest change that keeps the
#: recipe's model and code path (measured on 2 shared cores: BANG 19 s -> 6 s, the WRN-50-2 teacher
#: 28 s -> 4 s, ALF-LB 24 s -> 3 s, convex-relu's 250 ADMM iterations of 65k variables per step 22 s -> 1 s).
HEAVY: dict[str, list[str]] = {
    "bang/full.yaml": ["--data.init_args.batch_size=1"],  # two ViT-B/16 at 224 x 224
    "mtard/full_teacher.yaml": ["--model.init_args.attack_steps=1"],  # PGD-1 instead of PGD-10 on a WRN-50-2
    "alf-lb/full.yaml": ["--data.init_args.tokens_per_batch=1024", "--data.init_args.eval_tokens=1024"],
    "convex-relu/full.yaml": ["--model.init_args.iters_per_step=1"],
    "comic/full.yaml": ["--data.init_args.image_size=64", "--data.init_args.imbalance_ratio=1"],  # 3 ResNet-50s at 448 x 448
    "vididi/full.yaml": ["--data.init_args.size=32"],  # R3D-18 on 18 frames of 112 x 112, and a kNN bank
    # 7 Markov groups x 4,000 sequences of 256 tokens generated before the first step (96 s -> a few)
    "aioli/full.yaml": ["--data.init_args.pool_size=64", "--data.init_args.test_size=16"],
    # a 10-minute SCIP reference and 20 s / 60 s SCIP limits per instance of the 1000 x 5000 set cover (491 s -> seconds)
    "balans/full.yaml": [
        "--data.init_args.instances=1",
        "--data.init_args.reference_time=2",
        "--model.init_args.timelimit_first_solution=2",
        "--model.init_args.timelimit_alns_iteration=2",
        "--model.init_args.timelimit_local_branching_iteration=2",
        "--model.init_args.timelimit_crossover_random_feasible=2",
    ],
}


def _recipes() -> list[Path]:
    """Every YAML in cards/ that is a LightningCLI config (has a ``model`` with a ``class_path``)."""
    found = []
    for path in sorted(CARDS.glob("*/*.yaml")):
        config = yaml.safe_load(path.read_text())
        if isinstance(config, dict) and isinstance(config.get("model"), dict) and "class_path" in config["model"]:
            found.append(path)
    return found


RECIPES = _recipes()


def _conftest_writers() -> Any:
    """tests/datamodules/conftest.py's CIFAR writers (tests/ is not a package: load the file by path)."""
    name = "balance_zoo_tests_cifar_writers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "datamodules" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    writers = _conftest_writers()
    writers.CIFAR10_TRAIN_PER_CLASS = CIFAR10_TRAIN_PER_CLASS  # this copy of the module only
    root = tmp_path_factory.mktemp("cifar")
    writers._write_cifar10(root)
    writers._write_cifar100(root)
    spec = importlib.util.spec_from_file_location("balance_zoo_tests_multilabel", ROOT / "tests" / "datamodules" / "test_multilabel.py")
    assert spec is not None and spec.loader is not None
    multilabel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(multilabel)
    multilabel.write_coco(root)  # MS-COCO 2017 layout for cards/comic/full.yaml
    spec = importlib.util.spec_from_file_location("balance_zoo_tests_rbc_data", ROOT / "tests" / "zoo" / "test_rbc_data.py")
    assert spec is not None and spec.loader is not None
    rbc_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rbc_data)
    rbc_data.write_chula_rbc12(root)  # Chula RBC-12 layout for cards/rbc/full.yaml
    spec = importlib.util.spec_from_file_location("balance_zoo_tests_multimodal", ROOT / "tests" / "datamodules" / "test_multimodal.py")
    assert spec is not None and spec.loader is not None
    multimodal = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(multimodal)
    multimodal.write_cremad(root)  # CREMA-D layout (AudioWAV/, Image-01-FPS/, train.csv, test.csv) for cards/arl/full.yaml
    spec = importlib.util.spec_from_file_location("balance_zoo_tests_video", ROOT / "tests" / "datamodules" / "test_video.py")
    assert spec is not None and spec.loader is not None
    video = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(video)
    video.write_ucf101(root)  # UCF101 layout (UCF-101/, ucfTrainTestlist/) for cards/vididi/full.yaml
    return root


@pytest.fixture
def cifar_root(cifar_files: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torchvision's md5 tables name the fixture's files, so its real integrity check still runs."""

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    for cls in (datasets.CIFAR10, datasets.CIFAR100):
        folder = cifar_files / cls.base_folder
        monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[n, md5(folder / n)] for n, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(folder / cls.meta["filename"])})
    return cifar_files


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny MTARD teachers (MLPs on 3x32x32 and on 8x8 digits) published as hub folders."""
    from zoo.mtard import TeacherClassifier

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    for name, input_dim in (("cifar", 3 * 32 * 32), ("digits", 64)):
        for role in ("clean", "robust"):
            TeacherClassifier(num_classes=10, input_dim=input_dim, hidden_dims=[16]).save_pretrained(root / name / role)
    return root


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data_overrides(node: Any, prefix: str, cifar: Path) -> list[str]:
    """``--data...`` overrides for every data root, download flag, worker count and batch size in the recipe."""
    args: list[str] = []
    if not isinstance(node, dict):
        return args
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if key == "root":
            args.append(f"--{path}={cifar}")
        elif key == "download":
            args.append(f"--{path}=false")
        elif key == "num_workers":
            args.append(f"--{path}=0")
        elif key in ("batch_size", "eval_batch_size") and isinstance(value, int) and value > SMALL_BATCH:
            args.append(f"--{path}={SMALL_BATCH}")
        else:
            args += _data_overrides(value, path, cifar)
    return args


def _callbacks(config: dict) -> list[str]:
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    return [str(c.get("class_path", "")) if isinstance(c, dict) else str(c) for c in callbacks]


def recipe_args(recipe: Path, cifar: Path, teachers: Path, out: Path) -> list[str]:
    """The LightningCLI arguments of one recipe's smoke run."""
    config = yaml.safe_load(recipe.read_text())
    name = f"{recipe.parent.name}/{recipe.name}"
    args = ["--config", str(recipe), *_data_overrides(config.get("data"), "data", cifar)]
    init = config["model"].get("init_args") or {}
    kind = "cifar" if "cifar" in str(config.get("data", {})).lower() else "digits"
    for role in ("clean", "robust"):
        if f"{role}_teacher" in init:
            args.append(f"--model.init_args.{role}_teacher={teachers / kind / role}")
    if any(c.endswith("SavePretrained") for c in _callbacks(config)):  # the last callback: its dirpath goes to tmp
        args.append(f"--trainer.callbacks.dirpath={out / 'saved'}")
    return [
        *args,
        *HEAVY.get(name, []),
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={out}",
    ]


def smoke_fit(run: Any) -> None:
    """``fit`` the built recipe; ``fast_dev_run`` skips checkpoints, except Lightning 2.6's ``save_last`` at
    ``on_train_end`` (it writes the full model and optimizer state: 2 GB for BANG's two ViT-B/16)."""
    for callback in run.trainer.checkpoint_callbacks:
        callback.save_last = False
    run.trainer.fit(run.model, datamodule=run.datamodule)


def test_every_card_has_a_full_recipe_and_the_search_finds_them() -> None:
    names = {f"{p.parent.name}/{p.name}" for p in RECIPES}
    cards = sorted(p.name for p in CARDS.iterdir() if p.is_dir())
    assert {f"{c}/full.yaml" for c in cards} <= names
    assert {"mtard/full_teacher.yaml", "mtard/teacher.yaml", "convex-relu/robust.yaml"} <= names
    assert not any(n.endswith("claim.yaml") for n in names)
    assert set(HEAVY) <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_starts(recipe: Path, cifar_root: Path, teachers: Path, tmp_path: Path) -> None:
    run = build_lightning_cli(recipe_args(recipe, cifar_root, teachers, tmp_path), run=False)
    smoke_fit(run)
    assert run.trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1  # exactly one training batch ran
    for name, p in run.model.named_parameters():
        assert torch.isfinite(p).all(), f"{recipe}: {name} is not finite after one step"
    if any(c.endswith("SavePretrained") for c in _callbacks(yaml.safe_load(recipe.read_text()))):
        assert (tmp_path / "saved" / "config.json").is_file()  # written under tmp_path, not the recipe's runs/ folder
