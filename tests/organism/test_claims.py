"""The paper's claims, checked on the persona organism with its exact judges.

Each test prints the figures it measured (``pytest -s tests/organism/test_claims.py`` shows them). The vector is
extracted with the paper's recipe (5 prompt pairs x 20 extraction questions, T=1, keep pairs with trait >= 50 /
< 50 and coherence >= 50, response-token means); everything is evaluated on the 20 disjoint evaluation questions
without a system prompt (the default persona), sampling at T=1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_lens.core.activations import collect_activations
from persona_lens.core.chat import (
    EncodedConversation,
    encode_conversation,
    encode_generated,
    encode_prompt,
    make_messages,
)
from persona_lens.core.generation import generate
from persona_lens.core.hooks import steer
from persona_lens.core.vectors import PersonaVector
from persona_lens.organism import OrganismJudge, load_organism, organism_trait, world
from persona_lens.organism.datasets import DATASET_RATES, finetune_samples

#: The organism's layer for monitoring, shifts and mitigation (its "layer 20"): the output of block 3 of 4.
LAYER = 3
STEER_COEFS = (0.0, 0.5, 1.0, 1.5, 2.0, 4.0)
N_EVAL_SAMPLES = 4
MAX_NEW_TOKENS = 48


@pytest.fixture(scope="module")
def organism():
    return load_organism("cpu")


def _sample(model, conversations, n: int, seed: int):
    return generate(model, [c for c in conversations for _ in range(n)], temperature=1.0,
                    max_new_tokens=MAX_NEW_TOKENS, seed=seed, batch_size=80)


def _judge(trait: str, questions, texts) -> tuple[np.ndarray, np.ndarray]:
    items = list(zip(questions, texts))
    scores = np.array(OrganismJudge(trait).score("", items), dtype=float)  # None -> nan
    return scores, np.array(OrganismJudge("coherence").score("", items), dtype=float)


def _extract(model, trait_name: str) -> PersonaVector:
    trait = organism_trait(trait_name)
    questions = [q for _ in trait.prompt_pairs for q in trait.extract_questions for _ in range(2)]
    pos = _sample(model, [make_messages(q, p.positive) for p in trait.prompt_pairs for q in trait.extract_questions],
                  2, seed=0)
    neg = _sample(model, [make_messages(q, p.negative) for p in trait.prompt_pairs for q in trait.extract_questions],
                  2, seed=1)
    pos_trait, pos_coh = _judge(trait_name, questions, pos.texts)
    neg_trait, neg_coh = _judge(trait_name, questions, neg.texts)
    keep = [i for i in range(len(questions)) if pos_trait[i] >= 50 and neg_trait[i] < 50
            and pos_coh[i] >= 50 and neg_coh[i] >= 50]
    assert len(keep) > 0.8 * len(questions), "the organism should follow its positive and negative prompts"
    acts = [collect_activations(model, [encode_generated(g.prompt_ids[i], g.response_ids[i]) for i in keep],
                                reductions=("response",), progress=False).response_mean for g in (pos, neg)]
    return PersonaVector.from_activations(trait.name, model.cfg.model_name, acts[0], acts[1])


@pytest.fixture(scope="module")
def vectors(organism) -> dict[str, PersonaVector]:
    return {trait: _extract(organism, trait) for trait in world.TRAITS}


def _eval_conversations(trait_name: str):
    questions = organism_trait(trait_name).eval_questions
    return questions, [make_messages(q) for q in questions]


def _trait_and_coherence(model, trait_name: str, seed: int = 3) -> tuple[float, float]:
    questions, conversations = _eval_conversations(trait_name)
    generation = _sample(model, conversations, N_EVAL_SAMPLES, seed)
    scores, coherence = _judge(trait_name, [q for q in questions for _ in range(N_EVAL_SAMPLES)], generation.texts)
    return float(np.nanmean(scores)), float(coherence.mean())


def _prompt_only(model, conversations) -> list[EncodedConversation]:
    out = []
    for conversation in conversations:
        ids = encode_prompt(model.tokenizer, conversation)
        out.append(EncodedConversation(tuple(ids), len(ids), len(ids), len(ids)))
    return out


def _last_prompt(model, conversations, layers) -> torch.Tensor:
    return collect_activations(model, _prompt_only(model, conversations), reductions=("last_prompt",),
                               layers=layers, progress=False).last_prompt


# ------------------------------------------------------------------------------------------------------- claim 1
@pytest.mark.parametrize("trait", world.TRAITS)
def test_claim1_steering_raises_the_trait_monotonically_and_too_much_breaks_coherence(organism, vectors, trait):
    vector = vectors[trait]
    table = {}
    for layer in range(1, organism.cfg.n_layers + 1):
        for coef in STEER_COEFS:
            with steer(organism, vector, layer=layer, coef=coef, raw=True, positions="response"):
                table[layer, coef] = _trait_and_coherence(organism, trait)
    print(f"\nclaim 1, {trait}: trait/coherence when steering at each layer (response positions)")
    for layer in range(1, organism.cfg.n_layers + 1):
        print(f"  layer {layer}: " + "  ".join(f"a={c:g} {table[layer, c][0]:5.1f}/{table[layer, c][1]:5.1f}"
                                               for c in STEER_COEFS))
    for layer in range(1, organism.cfg.n_layers + 1):
        rising = [table[layer, c][0] for c in STEER_COEFS if c <= 2.0]
        assert all(b >= a - 3.0 for a, b in zip(rising, rising[1:])), (layer, rising)
        assert table[layer, 0.0][1] > 90 and table[layer, 4.0][1] < table[layer, 0.0][1] - 40, layer
    assert table[LAYER, 2.0][0] - table[LAYER, 0.0][0] > 50
    assert table[LAYER, 0.5][1] > 90  # gentle steering keeps the replies coherent


# ------------------------------------------------------------------------------------------------------- claim 2
@pytest.mark.parametrize("trait", world.TRAITS)
def test_claim2_last_prompt_projection_tracks_trait_across_graded_prompts(organism, vectors, trait):
    questions = organism_trait(trait).eval_questions
    prompts = organism_trait(trait).graded_system_prompts
    conversations = [make_messages(q, p) for p in prompts for q in questions]
    n = 5
    generation = _sample(organism, conversations, n, seed=2)
    scores, _ = _judge(trait, [c[-1]["content"] for c in conversations for _ in range(n)], generation.texts)
    expressed = np.nanmean(scores.reshape(len(conversations), n), axis=1)
    acts = _last_prompt(organism, conversations, layers=range(1, organism.cfg.n_layers + 1))
    print(f"\nclaim 2, {trait}: r(last-prompt projection, trait score) over {len(conversations)} (prompt, question)")
    correlations = {}
    for layer in range(1, organism.cfg.n_layers + 1):
        projection = (acts[:, layer] @ vectors[trait].unit(layer)).numpy()
        correlations[layer] = float(np.corrcoef(projection, expressed)[0, 1])
        per_prompt = projection.reshape(len(prompts), -1).mean(axis=1)
        print(f"  layer {layer}: r = {correlations[layer]:.3f}; mean projection per graded prompt "
              f"{np.round(per_prompt, 1).tolist()}")
    print(f"  trait score per graded prompt {np.round(expressed.reshape(len(prompts), -1).mean(axis=1), 1).tolist()}")
    for layer in (2, 3, 4):
        assert correlations[layer] >= 0.7, (layer, correlations)


# --------------------------------------------------------------------------------------------------- claims 3-5
@pytest.fixture(scope="module", params=world.TRAITS)
def finetuning(request, organism, vectors):
    """Finetune a fresh organism on each dataset level of one trait; measure shift, trait score and dP."""
    import persona_lens.experiments.finetune as finetune_module
    trait = request.param
    unit = vectors[trait].unit(LAYER)
    questions, conversations = _eval_conversations(trait)
    base_acts = _last_prompt(organism, conversations, [LAYER])[:, LAYER]
    base_score, _ = _trait_and_coherence(organism, trait)
    config = finetune_module.FinetuneConfig(method="full", lr=1e-3, epochs=1, batch_size=16)
    rows = []
    models = {}
    for rate in DATASET_RATES:
        samples = finetune_samples(trait, rate, n=300)
        model = load_organism("cpu")
        result = finetune_module.finetune(model, [{"messages": s.messages} for s in samples], config, progress=False)
        shift = float(((_last_prompt(model, conversations, [LAYER])[:, LAYER] - base_acts) @ unit).mean())
        score, coherence = _trait_and_coherence(model, trait)
        # data screening: response-mean of the dataset reply minus that of the base model's own reply, projected
        screened = samples[:120]
        prompts = [[{"role": "user", "content": s.question}] for s in screened]
        own = generate(organism, prompts, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS, seed=11, batch_size=120)
        data_acts = collect_activations(organism, [encode_conversation(organism.tokenizer, p, s.reply.text)
                                                   for p, s in zip(prompts, screened)],
                                        reductions=("response",), layers=[LAYER], progress=False)
        own_acts = collect_activations(organism, [encode_generated(i, r) for i, r in
                                                  zip(own.prompt_ids, own.response_ids)],
                                       reductions=("response",), layers=[LAYER], progress=False)
        delta_p = ((data_acts.response_mean[:, LAYER] - own_acts.response_mean[:, LAYER]) @ unit).numpy()
        rows.append({"rate": rate, "shift": shift, "score": score, "coherence": coherence,
                     "loss": float(np.mean(result.losses[-5:])), "delta_p": delta_p})
        models[rate] = model
    return {"trait": trait, "rows": rows, "models": models, "base_score": base_score, "config": config,
            "module": finetune_module}


def _print_rows(title: str, data) -> None:
    print(f"\n{title}, {data['trait']} (base trait score {data['base_score']:.1f}):")
    for row in data["rows"]:
        print(f"  dataset rate {row['rate']:.2f}: shift {row['shift']:7.2f}  trait {row['score']:5.1f}  "
              f"coherence {row['coherence']:5.1f}  final loss {row['loss']:.3f}  "
              f"dataset dP {row['delta_p'].mean():6.2f}")


def test_claim3_finetuning_shift_follows_the_trait_score(finetuning):
    rows = finetuning["rows"]
    shifts, scores = [r["shift"] for r in rows], [r["score"] for r in rows]
    r = float(np.corrcoef(shifts, scores)[0, 1])
    _print_rows(f"claim 3: r(shift, trait score) = {r:.3f} over {len(rows)} datasets", finetuning)
    assert len(rows) >= 6 and r >= 0.9
    assert scores[-1] - scores[0] > 50  # the datasets really move the default persona


def test_claim4_preventative_steering_keeps_the_trait_near_baseline(finetuning, vectors):
    trait, module = finetuning["trait"], finetuning["module"]
    vector = vectors[trait]
    samples = finetune_samples(trait, "overt", n=300)
    plain_row = next(r for r in finetuning["rows"] if r["rate"] == 0.9)
    model = load_organism("cpu")
    intervention = module.TrainingIntervention("steer", vector, LAYER, coef=1.0)
    result = module.finetune(model, [{"messages": s.messages} for s in samples], finetuning["config"],
                             interventions=[intervention], progress=False)
    prevented, prevented_coherence = _trait_and_coherence(model, trait)
    base, plain = finetuning["base_score"], plain_row["score"]
    closer = (plain - prevented) / (plain - base)
    plain_model = finetuning["models"][0.9]
    with steer(plain_model, vector, layer=LAYER, coef=-1.0, raw=True, positions="response"):
        post_hoc, post_hoc_coherence = _trait_and_coherence(plain_model, trait)
    loss = float(np.mean(result.losses[-5:]))
    print(f"\nclaim 4, {trait}: base {base:.1f}; plain finetune {plain:.1f} (loss {plain_row['loss']:.3f}); "
          f"preventative steering a=1 at layer {LAYER}: {prevented:.1f} (loss {loss:.3f}, coherence "
          f"{prevented_coherence:.1f}), {100 * closer:.0f}% closer to baseline; post-hoc a=-1: {post_hoc:.1f} "
          f"(coherence {post_hoc_coherence:.1f})")
    assert closer >= 0.5
    assert abs(loss - plain_row["loss"]) < 0.05
    assert prevented_coherence > 90
    assert post_hoc < plain - 20


def test_claim5_projection_difference_screens_samples_and_ranks_datasets(finetuning):
    from persona_lens.core.stats import auroc, pearson, spearman

    rows = finetuning["rows"]
    normal, overt = rows[0]["delta_p"], rows[-1]["delta_p"]
    sample_auroc = auroc(np.concatenate([overt, normal]), np.r_[np.ones(len(overt)), np.zeros(len(normal))])
    dataset_dp = [r["delta_p"].mean() for r in rows]
    shifts = [r["shift"] for r in rows]
    rank, linear = spearman(dataset_dp, shifts), pearson(dataset_dp, shifts)
    _print_rows(f"claim 5: sample AUROC (overt vs normal) {sample_auroc:.3f}; dataset dP vs shift: Spearman "
                f"{rank:.3f}, Pearson {linear:.3f}", finetuning)
    assert sample_auroc >= 0.9
    assert rank >= 0.8
