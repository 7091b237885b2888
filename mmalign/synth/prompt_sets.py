"""Write the shipped prompt sets of the synthetic world: ``assets/prompts/synth-{modality}-{split}.txt``.

Each file is every prompt of that modality's grammar (:func:`mmalign.synth.prompts.all_prompts`, in
its fixed order) whose split (:func:`mmalign.synth.prompts.split_of`) is ``split``. The generic data
layer reads them by name through :func:`mmalign.data.prompts.read_prompts`. Rewrite them with
``python -m mmalign.synth.prompt_sets``.
"""

from __future__ import annotations

from pathlib import Path

from mmalign.paths import asset_path
from mmalign.synth.prompts import MODALITIES, SPLITS, all_prompts, split_of


def prompt_set_texts() -> dict[str, str]:
    """File name → file text of every synthetic-world prompt set."""
    return {f"synth-{m}-{s}.txt": "".join(f"{p}\n" for p in all_prompts(m) if split_of(p) == s)
            for m in MODALITIES for s in SPLITS}


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
