"""``zoo.load(folder)`` against the raw path it wraps, on the same hub folder, in one run.

The peer is what a user who knows the class writes by hand: ``safetensors.torch.load_file``,
build the class with the init arguments, ``load_state_dict``, ``eval()``. ``zoo.load`` adds
reading ``config.json``, the registry lookup, the class and format checks and the strict key
comparison; the ratio shows what those cost on a model big enough for the weights to matter.
The two are timed alternately (after one warm-up each, so the file is in the page cache for
both) and the medians compared.

    python -m benchmarks.hub_load [--hidden 1024 1024 1024] [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from zoo.anyloss import AnyLossClassifier
from zoo.hub import WEIGHTS_NAME, load


def raw_load(folder: Path, init_args: dict) -> AnyLossClassifier:
    state = load_file(str(folder / WEIGHTS_NAME))
    model = AnyLossClassifier(**init_args)
    model.load_state_dict(state, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hub_load", description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024, 1024], help="hidden layer widths")
    parser.add_argument("--input-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    init_args = {"input_dim": args.input_dim, "hidden_dims": args.hidden}
    model = AnyLossClassifier(**init_args)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hub"
        model.save_pretrained(folder)
        size_mb = (folder / WEIGHTS_NAME).stat().st_size / 2**20

        x = torch.randn(4, args.input_dim)
        with torch.no_grad():  # same weights either way, checked once
            assert torch.equal(load(folder)(x), raw_load(folder, init_args)(x))

        times: dict[str, list[float]] = {"zoo": [], "raw": []}
        runs = {"zoo": lambda: load(folder), "raw": lambda: raw_load(folder, init_args)}
        for i in range(args.repeats):
            order = ("zoo", "raw") if i % 2 == 0 else ("raw", "zoo")
            for name in order:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)

    zoo_ms, raw_ms = (1000 * statistics.median(times[k]) for k in ("zoo", "raw"))
    ratio = zoo_ms / raw_ms
    print(
        f"hub_load: AnyLossClassifier(input_dim={args.input_dim}, hidden_dims={args.hidden}), "
        f"{n_params / 1e6:.2f} M params, {size_mb:.1f} MiB safetensors; median of {args.repeats}, {args.threads} thread(s)"
    )
    print(f"  {'zoo.load(folder)':<58}{zoo_ms:8.2f} ms")
    print(f"  {'raw: load_file + AnyLossClassifier(...) + load_state_dict':<58}{raw_ms:8.2f} ms")
    print(f"ratio zoo.load / raw: {ratio:.3f}")
    return ratio


if __name__ == "__main__":
    main()
