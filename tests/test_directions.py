import json

import pytest
import torch

from explore.editing.directions import Direction, DirectionLibrary, swap_word, text_direction
from explore.errors import CorruptFileError, DirectionMismatchError, InputError
from explore.pipeline.latent import encode_text


def test_direction_is_the_mean_template_difference(tiny_sd3):
    d = text_direction(tiny_sd3, "red", "blue", templates=["a {} circle", "one {} {subject}"], subject="cube")
    assert d.templates == [("a red circle", "a blue circle"), ("one red cube", "one blue cube")]
    c_neg, p_neg = encode_text(tiny_sd3, ["a red circle", "one red cube"])
    c_pos, p_pos = encode_text(tiny_sd3, ["a blue circle", "one blue cube"])
    assert torch.allclose(d.dc, (c_pos - c_neg).mean(0)) and torch.allclose(d.dp, (p_pos - p_neg).mean(0))
    assert d.attribute == "attribute" and d.model_id == "tiny-sd3" and d.name == "attribute-red-to-blue"
    neg = -d
    assert neg.source == "blue" and torch.equal(neg.dc, -d.dc)


def test_token_length_mismatch_is_counted_and_warned(tiny_sd3):
    with pytest.warns(UserWarning, match="different lengths"):
        d = text_direction(tiny_sd3, "red", "purple", templates=["a {} circle"])  # char-level tokens
    assert d.metadata["length_mismatch"] == 1


def test_swap_word_and_bad_values(tiny_sd3):
    assert swap_word("a Red circle, red", "red", "blue") == ("a Red circle, red", "a blue circle, blue")
    with pytest.raises(InputError, match="does not contain"):
        swap_word("a green circle", "red", "blue")
    with pytest.raises(InputError, match="two different values"):
        text_direction(tiny_sd3, "red", "red")
    with pytest.raises(InputError, match="non-empty"):
        text_direction(tiny_sd3, "", "red")


def test_save_load_round_trip_and_mismatches(tmp_path, tiny_sd3, tiny_flux):
    d = text_direction(tiny_sd3, "red", "blue", templates=["a {} circle"])
    d.dz = torch.randn(4, 8, 8)
    d.save(tmp_path / "dir")
    e = Direction.load(tmp_path / "dir.safetensors", pipe=tiny_sd3)
    assert torch.equal(e.dc, d.dc) and torch.equal(e.dp, d.dp) and torch.equal(e.dz, d.dz)
    assert e.templates == d.templates and e.metadata == d.metadata
    with pytest.raises(DirectionMismatchError, match="made for model 'tiny-sd3'"):
        Direction.load(tmp_path / "dir", pipe=tiny_flux)
    other = Direction(dc=torch.zeros(3, 3), dp=torch.zeros(2), attribute="a", source="x", target="y",
                      model_id="tiny-sd3")
    with pytest.raises(DirectionMismatchError, match="shapes"):
        other.check(tiny_sd3)
    (tmp_path / "dir.safetensors").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="dir.safetensors"):
        Direction.load(tmp_path / "dir")
    with pytest.raises(InputError, match="no direction"):
        Direction.load(tmp_path / "nothing")


def test_library_folder_with_index(tmp_path, tiny_sd3):
    lib = DirectionLibrary(tmp_path / "lib")
    lib.add(text_direction(tiny_sd3, "red", "blue", templates=["a {} circle"]))
    lib.add(text_direction(tiny_sd3, "small", "large", templates=["a {} circle"], attribute="size"))
    again = DirectionLibrary(tmp_path / "lib", model_id="tiny-sd3")
    assert len(again) == 2 and again.find(attribute="size") == ["size-small-to-large"]
    assert torch.equal(again.get("attribute-red-to-blue", pipe=tiny_sd3).dc, lib.get("attribute-red-to-blue").dc)
    index = json.loads((tmp_path / "lib" / "index.json").read_text())
    assert index["model_id"] == "tiny-sd3" and {"dc", "dp"} <= set(index["directions"][0])
    with pytest.raises(DirectionMismatchError):
        DirectionLibrary(tmp_path / "lib", model_id="other")
    with pytest.raises(InputError, match="no direction 'x'"):
        again.get("x")


def test_text_cache_serves_a_call_larger_than_itself(tiny_sd3, monkeypatch):
    """A call whose prompts (hits and new ones) outnumber the cache still gets every embedding: the
    Pairs benchmark's 64-prompt directions once evicted a hit of the same call (KeyError)."""
    import explore.pipeline.latent as latent

    monkeypatch.setattr(latent, "TEXT_CACHE_SIZE", 3)
    warm = ["a red circle", "a blue circle"]
    encode_text(tiny_sd3, warm)  # cached hits, oldest in the store
    prompts = warm + [f"a red circle {w}" for w in ("one", "two", "three")]
    c, p = encode_text(tiny_sd3, prompts)
    ref_c, ref_p = encode_text(tiny_sd3, prompts, cache=False)
    assert c.shape[0] == 5 and torch.allclose(c, ref_c, atol=1e-5) and torch.allclose(p, ref_p, atol=1e-5)
    assert len(latent.state(tiny_sd3).text) <= 3
