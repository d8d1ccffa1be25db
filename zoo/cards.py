"""Render an entry's model card (``cards/<entry>/README.md``) for a published model.

A card template is a real Hugging Face model card: YAML metadata, then markdown. Three
placeholders are filled at publish time, so nothing in a published card is a number nobody
measured: ``{{ repo_id }}``, ``{{ init_args }}`` (a YAML block of the model's init arguments)
and ``{{ metrics }}`` (a table of the metrics passed to ``zoo publish``, or a sentence saying
none were). Passed metrics also go into the card's ``model-index``.
"""

from __future__ import annotations

from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard

from zoo.errors import ZooError
from zoo.registry import Entry

__all__ = ["render_card", "CardError"]


def _metrics_table(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "_No evaluation metrics were passed to `zoo publish` for this upload._"
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
    return "| metric | value |\n|---|---|\n" + rows


def _eval_results(card: ModelCard, metrics: dict[str, float]) -> list[EvalResult]:
    data = card.data.to_dict()
    dataset = (data.get("datasets") or ["embedded"])[0]
    task = data.get("pipeline_tag") or "tabular-classification"
    return [
        EvalResult(task_type=task, dataset_type=dataset, dataset_name=dataset, metric_type=k, metric_value=float(v))
        for k, v in sorted(metrics.items())
    ]


class CardError(ZooError):
    """A card template whose YAML header cannot be read: reported in one line, exit code 2."""


def render_card(
    entry: Entry, init_args: dict[str, Any], metrics: dict[str, float] | None = None, repo_id: str | None = None
) -> ModelCard:
    """The entry's card with the placeholders filled in and the measured metrics in its metadata."""
    template = (entry.card_dir / "README.md").read_text() if (entry.card_dir / "README.md").is_file() else _fallback(entry)
    text = (
        template.replace("{{ repo_id }}", repo_id or f"balance-zoo/{entry.name}")
        .replace("{{ init_args }}", yaml.safe_dump(init_args, sort_keys=True).strip())
        .replace("{{ metrics }}", _metrics_table(metrics))
    )
    try:
        card = ModelCard(text)  # huggingface_hub reads the header with yaml.safe_load: no tags run
    except (yaml.YAMLError, ValueError) as err:  # a malformed header, or one that is not a mapping
        problem = getattr(err, "problem", None) or " ".join(str(err).split())[:200]
        raise CardError(f"{entry.card_dir}/README.md: its YAML header is not a valid model card header ({problem})") from None
    if metrics:
        card.data.model_name = repo_id or entry.name
        card.data.eval_results = _eval_results(card, metrics)
    return card


def _fallback(entry: Entry) -> str:
    """A minimal card for an entry whose template is missing (an installed, not cloned, zoo)."""
    paper = f"[{entry.paper}]({entry.arxiv_url})" if entry.arxiv_url else entry.paper
    return (
        f"---\nlibrary_name: balance-zoo\ntags: [balance-zoo, {entry.name}]\n---\n"
        f"# {entry.name}\n\n{entry.summary}\n\nPaper: {paper}\n\n"
        "## Configuration\n\n```yaml\n{{ init_args }}\n```\n\n## Evaluation\n\n{{ metrics }}\n"
    )
