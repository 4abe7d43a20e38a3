import pytest

from persona_lens.core.layers import all_layers, check_layer, hook_name, layer_of_hook


def test_layer_zero_is_the_embedding_stream():
    assert hook_name(0, 30) == "blocks.0.hook_resid_pre"


def test_layer_l_is_the_output_of_block_l():
    assert hook_name(1, 30) == "blocks.0.hook_resid_post"
    assert hook_name(20, 30) == "blocks.19.hook_resid_post"
    assert hook_name(30, 30) == "blocks.29.hook_resid_post"


def test_round_trip():
    for layer in all_layers(12):
        assert layer_of_hook(hook_name(layer, 12)) == layer


@pytest.mark.parametrize("bad", [-1, 31, 100])
def test_out_of_range_names_the_valid_range(bad):
    with pytest.raises(ValueError, match=r"0\.\.30"):
        check_layer(bad, 30)


def test_non_int_layer_is_refused():
    with pytest.raises(TypeError):
        check_layer("3", 30)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        layer_of_hook("blocks.3.attn.hook_z")
