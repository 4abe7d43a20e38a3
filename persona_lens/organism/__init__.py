"""A persona *model organism*: a small transformer whose personas are known exactly.

Without an LLM judge or a GPU, the claims of the persona-vectors paper can only be checked on a model whose persona
we know. The organism is one, small enough to learn and debug the whole method on a laptop in minutes:

* :mod:`~persona_lens.organism.world` -- a synthetic chat world: system prompts set personas (graded intensities of
  evil, sycophancy and hallucination, and a neutral default), users ask questions, and replies are clauses whose
  trait content follows known rules, each trait by its own mechanism (harmful advice, a flattering stance toward
  the user, invented facts instead of "i do not know"); coherence is the grammar of the reply's structure;
* :mod:`~persona_lens.organism.tokenizer` -- a word-level tokenizer with a chat template of its own (BOS, role
  tokens, end-of-turn token), so every code path is the one real chat models take;
* :mod:`~persona_lens.organism.train` -- deterministic training of a 4-block Llama on that world
  (``python -m persona_lens.organism.train`` reproduces the committed weights in ``weights/``);
* :mod:`~persona_lens.organism.judge` -- :class:`OrganismJudge`, the exact rule judge of the world's traits;
* :mod:`~persona_lens.organism.traits` -- :func:`organism_trait`, trait definitions in the persona_lens schema;
* :mod:`~persona_lens.organism.roles` -- the persona space's role set ``organism`` (default, villain, flatterer,
  fabulist; registered in :data:`persona_lens.core.registry.ROLE_SETS`), judged exactly, and scripted
  conversations that move into a role;
* :mod:`~persona_lens.organism.datasets` -- finetuning datasets: task data (repair advice, opinion feedback, object
  history) whose replies carry a trait at graded shares, and normal / subtle / overt versions.

``load_organism()`` returns the trained model as a :class:`~persona_lens.core.hooked_model.HookedLM`::

    from persona_lens.organism import OrganismJudge, load_organism, organism_trait

    model = load_organism()                       # 4 blocks, d_model 96, CPU float32
    trait = organism_trait("evil")                # the Trait "organism_evil": prompt pairs, questions, graded prompts
    judge = OrganismJudge("evil")                 # exact trait score; OrganismJudge("coherence") for coherence

Layer 3 (output of block 3 of 4) plays the role of the paper's layer 20: the figures of
``tests/organism/test_claims.py`` use it for monitoring, finetuning shifts, data screening and mitigation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from persona_lens.organism.datasets import finetune_samples, write_datasets
from persona_lens.organism.judge import OrganismJudge
from persona_lens.organism.traits import TRAIT_NAMES, organism_trait, organism_traits

if TYPE_CHECKING:
    import torch

    from persona_lens.core.hooked_model import HookedLM

#: The organism's model name, ``load_model(ORGANISM)``; registered in :data:`persona_lens.core.registry.MODELS`.
ORGANISM = "persona-organism"

__all__ = [
    "ORGANISM",
    "WEIGHTS_DIR",
    "TRAIT_NAMES",
    "OrganismJudge",
    "load_organism",
    "organism_trait",
    "organism_traits",
    "finetune_samples",
    "write_datasets",
]


#: The committed weights (Hugging Face format: config, safetensors, tokenizer files, training.json).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def load_organism(
    device: str | torch.device | None = None, dtype: str | torch.dtype | None = None, path: str | Path | None = None
) -> HookedLM:
    """The trained organism as a HookedLM named ``"persona-organism"`` (float32 on CPU by default).

    ``path`` loads another training run's folder (``python -m persona_lens.organism.train --out DIR``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_lens.core.hooked_model import HookedLM
    from persona_lens.core.models import resolve_device, resolve_dtype

    folder = Path(path) if path is not None else WEIGHTS_DIR
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(
            f"no organism weights in {folder}; train them with:  "
            "python -m persona_lens.organism.train" + (f" --out {folder}" if path else "")
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.name_or_path = ORGANISM
    tokenizer.init_kwargs["name_or_path"] = ORGANISM
    tokenizer.init_kwargs["add_bos_token"] = True  # the chat template writes it; TransformerLens must not reload
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(torch_device).eval()
    hf_model.config.name_or_path = ORGANISM
    return HookedLM(hf_model, tokenizer, model_name=ORGANISM)
