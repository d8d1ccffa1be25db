"""Render an entry's model card (``cards/<entry>/README.md``) for a published model, and read the
measured metrics back out of a published card.

A card template is a real Hugging Face model card: YAML metadata, then markdown. Placeholders
are filled at publish time, so nothing in a published card is a number nobody measured:
``{{ repo_id }}``, ``{{ init_args }}`` (a YAML block of the model's init arguments),
``{{ metrics }}`` (a table of the metrics passed to ``zoo publish``, or a sentence saying none
were) and ``{{ provenance }}`` (versions, commit and seed; appended as a section when the
template has no placeholder). Passed metrics also go into the card's ``model-index``, at full
precision: ``zoo verify`` compares a retrained run against those values.
"""

from __future__ import annotations

from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard

from zoo.errors import ZooError
from zoo.registry import Entry, SharedModule

__all__ = ["render_card", "card_metrics", "provenance_section", "CardError"]

_PROVENANCE_ROWS = (
    ("zoo_version", "balance-zoo"),
    ("git_commit", "git commit"),
    ("torch", "torch"),
    ("lightning", "lightning"),
    ("python", "python"),
    ("torch_threads", "torch threads"),
    ("seed", "seed"),
)


def _metrics_table(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "_No evaluation metrics were passed to `zoo publish` for this upload._"
    rows = "\n".join(f"| `{k}` | {v:.4f} |" for k, v in sorted(metrics.items()))
    return "| metric | value |\n|---|---|\n" + rows


def provenance_section(provenance: dict[str, Any], repo_id: str) -> str:
    """Markdown: where this upload comes from, and the command that re-checks its numbers."""
    rows = "\n".join(f"| {label} | `{provenance.get(key)}` |" for key, label in _PROVENANCE_ROWS if provenance.get(key) is not None)
    return (
        "| | |\n|---|---|\n" + rows + "\n\n"
        f"`zoo verify {repo_id}` retrains from this upload's `training_config.yaml` (when present), "
        "tests, and compares with the metrics above."
    )


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
    owner: Entry | SharedModule,
    init_args: dict[str, Any],
    metrics: dict[str, float] | None = None,
    repo_id: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> ModelCard:
    """The entry's card (a generic one for a shared module) with the placeholders filled in and
    the measured metrics in its metadata."""
    repo = repo_id or f"balance-zoo/{owner.name}"
    if isinstance(owner, Entry):
        template_path = owner.card_dir / "README.md"
        template = template_path.read_text() if template_path.is_file() else _fallback(owner)
    else:
        template = _shared_fallback(owner)
    if provenance is not None and "{{ provenance }}" not in template:
        template = template.rstrip("\n") + "\n\n## Provenance\n\n{{ provenance }}\n"
    text = (
        template.replace("{{ repo_id }}", repo)
        .replace("{{ init_args }}", yaml.safe_dump(init_args, sort_keys=True).strip())
        .replace("{{ metrics }}", _metrics_table(metrics))
        .replace("{{ provenance }}", provenance_section(provenance or {}, repo))
    )
    try:
        card = ModelCard(text)  # huggingface_hub reads the header with yaml.safe_load: no tags run
    except (yaml.YAMLError, ValueError) as err:  # a malformed header, or one that is not a mapping
        problem = getattr(err, "problem", None) or " ".join(str(err).split())[:200]
        where = f"{owner.card_dir}/README.md" if isinstance(owner, Entry) else f"{owner.name} card README.md"
        raise CardError(f"{where}: its YAML header is not a valid model card header ({problem})") from None
    if metrics:
        card.data.model_name = repo_id or owner.name
        card.data.eval_results = _eval_results(card, metrics)
    return card


def card_metrics(text: str) -> dict[str, float]:
    """The measured metrics of a card's ``model-index`` (its YAML header), by metric type.

    Raises ``ValueError`` with the reason when the header is missing, not YAML, or holds no
    numeric metric: a card without measured numbers has nothing to verify.
    """
    if not text.startswith("---"):
        raise ValueError("the card has no YAML header")
    parts = text.split("---", 2)
    if len(parts) < 3:
        raise ValueError("the card's YAML header is not closed by '---'")
    try:
        meta = yaml.safe_load(parts[1])
    except yaml.YAMLError as err:
        raise ValueError(f"the card's YAML header does not parse ({type(err).__name__})") from None
    found: dict[str, float] = {}
    index = meta.get("model-index") if isinstance(meta, dict) else None
    for model in index if isinstance(index, list) else []:
        for result in (model or {}).get("results") or [] if isinstance(model, dict) else []:
            for metric in (result or {}).get("metrics") or [] if isinstance(result, dict) else []:
                value = metric.get("value") if isinstance(metric, dict) else None
                if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(metric.get("type"), str):
                    found[metric["type"]] = float(value)
    if not found:
        raise ValueError("the card's model-index holds no measured metrics (publish with --metrics)")
    return found


def _fallback(entry: Entry) -> str:
    """A minimal card for an entry whose template is missing (an installed, not cloned, zoo)."""
    paper = f"[{entry.paper}]({entry.arxiv_url})" if entry.arxiv_url else entry.paper
    return (
        f"---\nlibrary_name: balance-zoo\ntags: [balance-zoo, {entry.name}]\n---\n"
        f"# {entry.name}\n\n{entry.summary}\n\nPaper: {paper}\n\n"
        "## Configuration\n\n```yaml\n{{ init_args }}\n```\n\n## Evaluation\n\n{{ metrics }}\n"
    )


def _shared_fallback(shared: SharedModule) -> str:
    """The card of a shared module (a baseline or template that several entries build on)."""
    return (
        f"---\nlibrary_name: balance-zoo\ntags: [balance-zoo, {shared.name}]\n---\n"
        f"# {shared.name}\n\n{shared.summary}\n\nA shared balance-zoo module, not one paper's entry; "
        "load it with `zoo.load(\"{{ repo_id }}\")`.\n\n"
        "## Configuration\n\n```yaml\n{{ init_args }}\n```\n\n## Evaluation\n\n{{ metrics }}\n"
    )
