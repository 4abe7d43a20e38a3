"""One model across devices: a tiny model with blocks offloaded to disk (accelerate) behaves exactly as whole."""

import pytest
import torch

import persona_lens
import persona_lens.experiments.extract as X
from persona_lens.core.activations import collect_activations, median_residual_norms
from persona_lens.core.chat import encode_conversation, make_messages
from persona_lens.core.devices import block_devices, input_device, layered_device_map, offloaded_parameters
from persona_lens.core.generation import generate
from persona_lens.core.hooks import record, steer
from persona_lens.core.tiny import build_tiny
from persona_lens.core.vectors import PersonaVector
from persona_lens.experiments.finetune import FinetuneConfig, finetune
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import TINY, load_cached

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Why is the sky blue? Explain briefly please."]
ANSWERS = ["Paris.", "Blue is a fine colour, I think.", "Because of Rayleigh scattering of sunlight."]
_SPLIT: dict[str, persona_lens.HookedLM] = {}


def _split(name, folder):
    """Blocks alternate between the CPU and the disk (weights read from the offload folder at each forward)."""
    if name not in _SPLIT:
        n_layers = build_tiny(name)[0].config.num_hidden_layers
        device_map = layered_device_map(build_tiny(name)[0], ["cpu", "disk"] * (n_layers // 2))
        _SPLIT[name] = persona_lens.load_model(name, device_map=device_map, offload_folder=folder)
    return _SPLIT[name]


@pytest.fixture(params=TINY)
def pair(request, tmp_path_factory):
    name = request.param
    return load_cached(name), _split(name, tmp_path_factory.mktemp("offload"))


def _random_vector(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return PersonaVector(
        "test", model.cfg.model_name, 3.0 * torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
    )


def test_the_split_model_really_is_offloaded(pair):
    whole, split = pair
    offloaded = offloaded_parameters(split.hf_model)
    assert offloaded and all(".layers.1." in n or ".layers.3." in n for n in offloaded)
    assert not offloaded_parameters(whole.hf_model)
    assert split.device == input_device(split.hf_model) == torch.device("cpu")
    assert block_devices(split.hf_model) == [torch.device("cpu")] * split.cfg.n_layers


def test_activations_and_norms_equal_the_whole_model(pair):
    whole, split = pair
    convs = [
        encode_conversation(whole.tokenizer, make_messages(q, system="Be brief."), a)
        for q, a in zip(QUESTIONS, ANSWERS)
    ]
    a = collect_activations(whole, convs, batch_size=2, progress=False)
    b = collect_activations(split, convs, batch_size=2, progress=False)
    for positions in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(a.get(positions), b.get(positions), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        median_residual_norms(whole, convs), median_residual_norms(split, convs), rtol=0, atol=1e-6
    )


def test_steered_and_recorded_generation_equals_the_whole_model(pair):
    whole, split = pair
    vector = _random_vector(whole)
    prompts = [make_messages(q) for q in QUESTIONS[:2]]
    replies = {}
    for label, model in (("whole", whole), ("split", split)):
        with (
            steer(model, vector, layer=[1, 3], coef=4.0, raw=True, positions="all"),
            record(model, vector, layer=2) as rec,
        ):
            out = generate(model, prompts, max_new_tokens=6)
        replies[label] = (out.texts, out.response_ids, rec.projections())
        plain = generate(model, prompts, max_new_tokens=6)
        assert plain.response_ids != out.response_ids  # the steering did something
    assert replies["whole"][:2] == replies["split"][:2]
    torch.testing.assert_close(replies["whole"][2], replies["split"][2], rtol=0, atol=1e-5, equal_nan=True)


def test_steering_vectors_are_cast_once_per_device_not_per_step(pair):
    _, split = pair
    vector = _random_vector(split)
    with steer(split, vector, layer=2, coef=1.0, raw=True, positions="all") as handle:
        generate(split, [make_messages("Hi")], max_new_tokens=5)
        (hook,) = handle.fns
        assert list(hook._cast) == [(torch.device("cpu"), torch.float32)]


def test_extraction_gives_the_same_vectors(tmp_path):
    whole, split = load_cached("tiny-llama"), _split("tiny-llama", tmp_path / "offload")
    config = X.ExtractConfig(
        n_samples=2, n_questions=2, n_pairs=2, max_new_tokens=5, batch_size=4, coherence_threshold=0.0
    )
    results = [
        X.extract(
            model,
            load_trait("shouting"),
            judge=RuleJudge("shouting"),
            coherence_judge=RuleJudge("coherence"),
            config=config,
            out_dir=tmp_path / label,
            progress=False,
        )
        for label, model in (("whole", whole), ("split", split))
    ]
    for positions in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(
            results[0].vectors[positions].vectors, results[1].vectors[positions].vectors, rtol=0, atol=1e-6
        )


def test_auto_device_map_within_max_memory_offloads_to_disk_and_agrees(tmp_path):
    whole = load_cached("tiny-qwen2")
    budget = sum(p.numel() * 4 for p in whole.hf_model.parameters()) // 2
    split = persona_lens.load_model(
        "tiny-qwen2", device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path
    )
    assert "disk" in split.hf_model.hf_device_map.values()
    ids = torch.tensor([[5, 17, 33, 90, 120, 7]])
    with torch.no_grad():
        torch.testing.assert_close(split(ids), whole(ids), rtol=0, atol=1e-5)


def test_finetuning_an_offloaded_model_is_refused_with_the_fix(tmp_path):
    split = _split("tiny-qwen2", tmp_path)
    with pytest.raises(ValueError, match="offloaded"):
        finetune(
            split,
            [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "OK"}]],
            FinetuneConfig(method="lora"),
            progress=False,
        )


def test_bad_device_map_arguments_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        persona_lens.load_model("tiny-llama", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="offload_folder"):
        persona_lens.load_model("tiny-llama", device_map={"model": "disk", "lm_head": "cpu"})
    with pytest.raises(ValueError, match="only apply with device_map"):
        persona_lens.load_model("tiny-llama", max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="unknown device_map"):
        persona_lens.load_model("tiny-llama", device_map="everywhere")
