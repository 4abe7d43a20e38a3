"""Does the organism's evil vector overlap sycophancy because their prompts share words ("the user")?

Issue 13, section 2: on the v2 weights the evil and sycophancy vectors were the closest pair (cosine 0.485 at layer
3) and the evil vector tracked the graded sycophancy prompts. Two of evil's five prompt pairs say "always/never
hurt the user", and every sycophancy instruction ends in "the user". This script extracts evil vectors from the
pairs with and without those words (the library's extraction, organism judges) and prints, side by side:

* the cosine of each with the sycophancy vector at layers 1-4;
* r(last-prompt projection at LAYER, the world's sycophancy rate) on the graded sycophancy prompts (no generation:
  the rate is the world's rule), beside the sycophancy and hallucination vectors as references and the 5-95% band
  of seeded random directions as the control.

    PYTHONPATH=. python benchmarks/organism_prompt_overlap.py --out /tmp/overlap [--weights DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import EncodedConversation, encode_prompt, make_messages
from persona_lens.core.controls import project_rows, random_like
from persona_lens.core.stats import pearson
from persona_lens.experiments.extract import ExtractConfig, extract
from persona_lens.organism import OrganismJudge, load_organism, organism_trait, world

LAYER = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the extraction runs (resumable)")
    parser.add_argument("--weights", default=None, help="organism weights folder (default: the committed weights)")
    parser.add_argument("--samples", type=int, default=2, help="replies per (prompt, question)")
    args = parser.parse_args()

    model = load_organism("cpu", path=args.weights)
    config = ExtractConfig(n_samples=args.samples, max_new_tokens=48, batch_size=80)
    coherence = OrganismJudge("coherence")

    def vector(trait_name: str, pairs: list[int] | None = None):
        trait = organism_trait(trait_name)
        if pairs is not None:
            trait = dataclasses.replace(trait, prompt_pairs=tuple(trait.prompt_pairs[i] for i in pairs))
        tag = trait_name + ("" if pairs is None else "_" + "".join(map(str, pairs)))
        result = extract(
            model,
            trait,
            judge=OrganismJudge(trait_name),
            coherence_judge=coherence,
            config=config,
            out_dir=Path(args.out) / tag,
            progress=False,
        )
        return result.vector, result.report

    evil_pairs = organism_trait("evil").prompt_pairs
    with_user = [i for i, p in enumerate(evil_pairs) if "the user" in p.positive]
    without_user = [i for i in range(len(evil_pairs)) if i not in with_user]
    for i, pair in enumerate(evil_pairs):
        print(f"evil pair {i}: + {pair.positive!r}  - {pair.negative!r}")
    vectors = {
        "evil, all pairs": vector("evil"),
        f"evil, pairs {without_user} (no 'the user')": vector("evil", without_user),
        f"evil, pairs {with_user} ('the user')": vector("evil", with_user),
        "sycophancy, all pairs": vector("sycophancy"),
        "hallucination, all pairs": vector("hallucination"),
    }
    sycophancy = vectors["sycophancy, all pairs"][0]

    trait = organism_trait("sycophancy")
    conversations = [make_messages(q, p) for p in trait.graded_system_prompts for q in trait.eval_questions]
    rates = np.array(
        [
            world.question_rates(world.rates_for_system_prompt(c[0]["content"]), c[-1]["content"])["sycophancy"]
            for c in conversations
        ]
    )
    encoded = []
    for conversation in conversations:
        ids = encode_prompt(model.tokenizer, conversation)
        encoded.append(EncodedConversation(tuple(ids), len(ids), len(ids), len(ids)))
    acts = collect_activations(model, encoded, reductions=("last_prompt",), layers=[LAYER], progress=False).last_prompt[
        :, LAYER
    ]
    random_rows = random_like(sycophancy, 100, seed=0)[:, LAYER]
    low, high = np.percentile([pearson(p, rates) for p in project_rows(acts, random_rows).numpy()], [5, 95])
    print(
        f"\nweights: {args.weights or 'committed'}; layer {LAYER}; graded sycophancy prompts: "
        f"{len(conversations)} (prompt, question); random directions r 5-95%: {low:.3f}..{high:.3f}"
    )
    print(
        "vector | pairs kept | cosine with the sycophancy vector, layers 1-4 | r(last-prompt projection, "
        "world sycophancy rate)"
    )
    for name, (vec, report) in vectors.items():
        cosines = [float(vec.unit(layer) @ sycophancy.unit(layer)) for layer in range(1, model.cfg.n_layers + 1)]
        r = pearson((acts @ vec.unit(LAYER)).numpy(), rates)
        print(f"{name} | {report['kept']} of {report['pairs']} | {' / '.join(f'{c:.3f}' for c in cosines)} | {r:.3f}")


if __name__ == "__main__":
    main()
