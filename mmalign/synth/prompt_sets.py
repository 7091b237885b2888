"""Write the shipped prompt sets of the synthetic world: ``assets/prompts/synth-{modality}-{split}.txt``.

Each file is every prompt of that modality's grammar (:func:`mmalign.synth.prompts.all_prompts`, in
its fixed order) whose split (:func:`mmalign.synth.prompts.split_of`) is ``split``. The skills that
have prompts of their own kind (:data:`SKILL_KINDS`) also get ``synth-{modality}-{skill}-{split}.txt``:
the prompts of that kind only (SELMA's per-skill prompt sets, ``recipes/synth-selma.yaml``). The generic data
layer reads them by name through :func:`mmalign.data.prompts.read_prompts`. Rewrite them with
``python -m mmalign.synth.prompt_sets``.
"""

from __future__ import annotations

from pathlib import Path

from mmalign.paths import asset_path
from mmalign.synth.prompts import MODALITIES, SPLITS, all_prompts, parse_prompt, split_of

#: (modality, skill) -> the prompt kind that tests it alone
SKILL_KINDS: dict[tuple[str, str], str] = {("image", "count"): "count", ("image", "spatial"): "spatial",
                                            ("video", "motion"): "motion", ("video", "change"): "change"}


def prompt_set_texts() -> dict[str, str]:
    """File name → file text of every synthetic-world prompt set."""
    def text(modality: str, split: str, kind: str | None = None) -> str:
        return "".join(f"{p}\n" for p in all_prompts(modality)
                       if split_of(p) == split and (kind is None or parse_prompt(p, modality).kind == kind))

    out = {f"synth-{m}-{s}.txt": text(m, s) for m in MODALITIES for s in SPLITS}
    out.update({f"synth-{m}-{skill}-{s}.txt": text(m, s, kind) for (m, skill), kind in SKILL_KINDS.items() for s in SPLITS})
    return out


def write_prompt_sets(folder: Path | None = None) -> list[Path]:
    """Write the sets to ``folder`` (default: the shipped ``assets/prompts/``); return the paths written."""
    folder = Path(folder) if folder is not None else asset_path("prompts")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in prompt_set_texts().items():
        (folder / name).write_text(text, encoding="utf-8")
        out.append(folder / name)
    return out


if __name__ == "__main__":
    for p in write_prompt_sets():
        print(p)
