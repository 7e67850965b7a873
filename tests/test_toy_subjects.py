"""Subjects files: the built-in subjects as YAML, round trips, every bad-file case, photo sets and prompts."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.toyworld import SUBJECTS, get_subject, load_subjects, parse_caption
from steerguide.toyworld.subjects import builtin_subjects_path, default_photos, subjects_yaml
from steerguide.toyworld.world import BACKGROUNDS, POSITIONS, RARE_TOKENS

GOOD = {"token": "sks", "class": "star", "look": "split_v", "colors": ["cyan", [225, 30, 160]]}


def write(tmp_path, data, name="subjects.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_builtin_subjects_are_a_subjects_file_in_the_package():
    assert builtin_subjects_path().is_file()
    assert load_subjects() == SUBJECTS == load_subjects(builtin_subjects_path())
    assert len(SUBJECTS) == 10 and "sks_star" in SUBJECTS
    s = get_subject("sks")
    assert s is get_subject("sks_star") and s.name == "sks_star" and s.instance_prompt == "a sks star"
    assert s.look.a == (0, 215, 225) and s.look.b == (225, 30, 160)


def test_round_trip(tmp_path):
    path = write(tmp_path, subjects_yaml(SUBJECTS.values()))
    assert load_subjects(path) == SUBJECTS
    # an entry with its own photos and an [r, g, b] color that has no name survives too
    own = {**GOOD, "colors": [[1, 2, 3], "lime"], "token": "hto",
           "photos": [{"background": "gray", "position": "center", "size": "large"}] * 2}
    first = load_subjects(write(tmp_path, {"subjects": [own]}, "own.yaml"))
    again = load_subjects(write(tmp_path, subjects_yaml(first.values()), "again.yaml"))
    assert again == first and first["hto_star"].look.a == (1, 2, 3)
    assert len(first["hto_star"].reference_images()) == 2


def test_same_token_serves_several_subjects_of_a_file(tmp_path):
    path = write(tmp_path, {"subjects": [GOOD, {**GOOD, "class": "heart"}]})
    assert get_subject("sks_heart", path).class_noun == "heart"
    with pytest.raises(UserError, match="several subjects"):
        get_subject("sks", path)
    with pytest.raises(UserError, match="unknown subject 'kfp_star' in"):
        get_subject("kfp_star", path)


BAD = [
    ({"subjects": [{**GOOD, "token": "dog"}]}, r"subject #1 \(dog_star\): key token: 'dog' is not a rare token"),
    ({"subjects": [{**GOOD, "class": "dog"}]}, r"subject #1 \(sks_dog\): key class:"),
    ({"subjects": [{**GOOD, "look": "plaid"}]}, r"subject #1 \(sks_star\): key look: 'plaid'"),
    ({"subjects": [{**GOOD, "colors": ["cyan"]}]}, r"key colors: expected two colors"),
    ({"subjects": [{**GOOD, "colors": ["cyan", "beige"]}]}, r"key colors\[1\]: 'beige' is not a color name"),
    ({"subjects": [{**GOOD, "colors": ["cyan", [1, 2, 300]]}]}, r"key colors\[1\]:.*0-255"),
    ({"subjects": [{**GOOD, "colors": ["cyan", [1, 2]]}]}, r"key colors\[1\]:"),
    ({"subjects": [{k: v for k, v in GOOD.items() if k != "look"}]}, r"subject #1 \(sks_star\): key look: missing"),
    ({"subjects": [{**GOOD, "shape": "star"}]}, r"key shape: unknown"),
    ({"subjects": [{**GOOD, "photos": []}]}, r"key photos: expected a list of 1-20"),
    ({"subjects": [{**GOOD, "photos": [{"background": "gray", "position": "center"}]}]}, r"key photos\[0\]:"),
    ({"subjects": [{**GOOD, "photos": [{"background": "blue", "position": "center", "size": "large"}]}]},
     r"key photos\[0\]\.background: 'blue'"),
    ({"subjects": [{**GOOD, "photos": [{"background": "gray", "position": "middle", "size": "large"}]}]},
     r"key photos\[0\]\.position"),
    ({"subjects": [{**GOOD, "photos": [{"background": "gray", "position": "center", "size": "huge"}]}]},
     r"key photos\[0\]\.size"),
    ({"subjects": [{**GOOD, "photos": [{"background": b, "position": "center", "size": "large"}
                                       for b in BACKGROUNDS]}]}, r"key photos: they show every background"),
    ({"subjects": [{**GOOD, "photos": [{"background": "gray", "position": p, "size": "large"}
                                       for p in POSITIONS]}]}, r"key photos: they show every position"),
    ({"subjects": [GOOD, "sks"]}, r"subject #2: key \(entry\): expected a mapping"),
    ({"subjects": [GOOD, GOOD]}, r"subject #2 \(sks_star\): key token: sks_star is defined twice"),
    ({"subjects": []}, r"subjects: the list is empty"),
    ({"people": [GOOD]}, r"expected a mapping with one key, subjects"),
    ("subjects: [a, b", r"not valid YAML at line"),
    ("", r"expected a mapping with one key"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_subjects_file_is_one_line_naming_subject_and_key(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(UserError, match=message) as e:
        load_subjects(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_subjects_file_through_the_cli_exits_2(tmp_path, capsys):
    path = write(tmp_path, {"subjects": [{**GOOD, "look": "plaid"}]})
    assert run(["toyworld", "prompts", "sks_star", "--subjects-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "subject #1 (sks_star): key look" in err
    assert run(["toyworld", "prompts", "sks", "--subjects-file", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run(["toyworld", "prompts", "sks_star", "--subjects-file", str(write(tmp_path, {"subjects": [GOOD]}))]) == 0
    assert "a sks star" in capsys.readouterr().out


@pytest.mark.parametrize("token", RARE_TOKENS)
def test_photos_drawn_from_the_token_span_a_few_contexts(token):
    photos = default_photos(token)
    assert photos == default_photos(token) and len(photos) == 5 and len(set(photos)) == 5
    assert 2 <= len({p.background for p in photos}) <= 3
    assert len({p.position for p in photos}) == 2 and len({p.size for p in photos}) == 2


@pytest.mark.parametrize("name", list(SUBJECTS))
def test_prompts_and_heldout_renders_ask_only_for_what_the_photos_lack(name):
    s = SUBJECTS[name]
    prompts = s.eval_prompts()
    assert len(prompts) == 16 and len(set(prompts)) == 16
    for p in prompts:
        spec = parse_caption(p)
        assert spec.token == s.token and spec.shape == s.class_noun
        assert spec.background not in s.photo_backgrounds and spec.position not in s.photo_positions
    kinds = {"background": 0, "position": 0, "second": 0, "color": 0}
    for spec in s.eval_specs():
        for k in kinds:
            kinds[k] += getattr(spec, k) is not None
    assert kinds["background"] >= 3 and kinds["position"] >= 3 and kinds["second"] == 2 and kinds["color"] == 2
    for spec in s.heldout_specs(16):
        assert spec.background not in s.photo_backgrounds and spec.position not in s.photo_positions
    photos = [np.asarray(im, dtype=float) for im in s.reference_images()]
    assert max(np.abs(a - photos[0]).mean() for a in photos) > 25  # not one context with jitter


def test_export_writes_a_subjects_file_that_loads_back(tmp_path):
    from steerguide.toyworld import export_subjects

    folder = export_subjects(tmp_path / "out", ["sks_star", "kfp"])
    assert set(load_subjects(folder / "subjects.yaml")) == {"sks_star", "kfp_star"}
    assert load_subjects(folder / "subjects.yaml")["kfp_star"] == SUBJECTS["kfp_star"]
