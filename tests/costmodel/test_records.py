"""User model cards and device profiles from JSON / TOML files: round trip, registration,
and errors that name the file and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from costmodel.cards import CARDS, CardError, get_card, load_card
from costmodel.profiles import PROFILES, ProfileError, get_profile, load_profile


def test_card_json_and_toml_round_trip(tmp_path):
    d = dataclasses.asdict(get_card("smollm2-135m"))
    d.update(name="smol-copy", n_layers=4)
    (tmp_path / "c.json").write_text(json.dumps(d))
    card = load_card(tmp_path / "c.json")
    assert card == dataclasses.replace(get_card("smollm2-135m"), name="smol-copy", n_layers=4)
    assert CARDS["smol-copy"] is card
    toml = "\n".join(f'{k} = {json.dumps(v)}' for k, v in d.items() if v is not None)
    (tmp_path / "c.toml").write_text(toml)
    assert load_card(tmp_path / "c.toml", register=False) == card
    del CARDS["smol-copy"]


def test_profile_round_trip_registers(tmp_path):
    d = dataclasses.asdict(get_profile("rpi5"))
    d.update(name="pi-copy", mem_budget_gb=2.0)
    (tmp_path / "p.json").write_text(json.dumps(d))
    prof = load_profile(tmp_path / "p.json")
    assert prof.mem_budget_gb == 2.0 and prof.peak_tflops == get_profile("rpi5").peak_tflops
    assert PROFILES["pi-copy"] is prof
    del PROFILES["pi-copy"]


@pytest.mark.parametrize("loader, error, base", [(load_card, CardError, "smollm2-135m"),
                                                 (load_profile, ProfileError, "rpi5")])
def test_bad_files_name_file_and_field(tmp_path, loader, error, base):
    src = get_card(base) if loader is load_card else get_profile(base)
    d = dataclasses.asdict(src)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**d, "n_experts": 8}))
    with pytest.raises(error, match=r"bad\.json.*unknown.*n_experts"):
        loader(bad, register=False)
    d.pop("name")
    bad.write_text(json.dumps(d))
    with pytest.raises(error, match=r"bad\.json.*missing.*'name'"):
        loader(bad, register=False)
    bad.write_text("{not json")
    with pytest.raises(error, match=r"bad\.json: not valid json"):
        loader(bad, register=False)
    broken = tmp_path / "bad.toml"
    broken.write_text("name = ")
    with pytest.raises(error, match=r"bad\.toml: not valid toml"):
        loader(broken, register=False)


def test_booleans_are_strict_and_validation_errors_name_the_file(tmp_path):
    d = dataclasses.asdict(get_card("smollm2-135m"))
    bad = tmp_path / "card.json"
    bad.write_text(json.dumps({**d, "name": "x", "tied_embeddings": "no"}))
    with pytest.raises(CardError, match=r"card\.json.*'tied_embeddings' must be true or false"):
        load_card(bad, register=False)
    bad.write_text(json.dumps({**d, "name": "x", "n_layers": -3}))
    with pytest.raises(CardError, match=r"card\.json.*n_layers"):
        load_card(bad, register=False)
    p = dataclasses.asdict(get_profile("rpi5"))
    badp = tmp_path / "prof.json"
    badp.write_text(json.dumps({**p, "name": "y", "eff_memory": 2.0}))
    with pytest.raises(ProfileError, match=r"prof\.json.*eff_memory"):
        load_profile(badp, register=False)
    badp.write_text(json.dumps([1, 2]))
    with pytest.raises(ProfileError, match=r"prof\.json.*mapping"):
        load_profile(badp, register=False)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_files_name_the_file(tmp_path, make):
    path = tmp_path / "p.json"
    if make == "directory":
        path.mkdir()
    with pytest.raises(ProfileError, match=r"p\.json: cannot read"):
        load_profile(path, register=False)
