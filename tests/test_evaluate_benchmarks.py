"""DreamBench in its original layout, and bad dataset layouts as one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from steerguide.cli import run
from steerguide.errors import UserError
from steerguide.evaluate.benchmarks import load_benchmark, load_dreambench, parse_prompts_and_classes

SAMPLE = Path("/work/shared/dreambench-sample")
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason="DreamBench sample not present")


@needs_sample
def test_sample_loads_subjects_classes_and_prompt_lists():
    bench = load_dreambench(SAMPLE)
    # Listed subjects without a folder are skipped (the sample holds 5 of the 30); file order is kept.
    assert [s.name for s in bench.subjects] == ["cat", "dog", "red_cartoon", "teapot", "vase"]
    dog, teapot, cartoon = bench.subject("dog"), bench.subject("teapot"), bench.subject("red_cartoon")
    assert (dog.class_noun, teapot.class_noun, cartoon.class_noun) == ("dog", "teapot", "cartoon")
    assert dog.live and not teapot.live and not cartoon.live
    assert len(dog.prompts) == len(teapot.prompts) == 25
    assert dog.prompts[0] == "a sks dog in the jungle"
    assert "a sks dog wearing a red hat" in dog.prompts  # live list
    assert "a sks teapot floating in an ocean of milk" in teapot.prompts  # object list
    assert not any("wearing" in p for p in teapot.prompts)
    assert teapot.prompts[-1] == "a cube shaped sks teapot"
    assert [p.name for p in bench.subject("vase").references] == [f"{i:02d}.jpg" for i in range(6)]
    assert len(cartoon.reference_images()) == 4 and cartoon.reference_images()[0].mode == "RGB"
    assert dog.instance_prompt == "a sks dog"
    assert dog.text_prompt("a sks dog in the snow") == "a dog in the snow"


@needs_sample
def test_token_subjects_and_prompt_count_are_options():
    bench = load_benchmark(
        {"name": "dreambench", "root": str(SAMPLE), "subjects": ["teapot"], "token": "zwx", "num_prompts": 3}
    )
    (teapot,) = bench.subjects
    assert teapot.prompts == [
        "a zwx teapot in the jungle",
        "a zwx teapot in the snow",
        "a zwx teapot on the beach",
    ]


def test_parser_reads_both_lists_and_rejects_other_files():
    text = (
        "Classes\n\nsubject_name,class\nmug,cup\ndog9,dog\n\nPrompts\n\nObject Prompts\n\nprompt_list = [\n"
        "'a {0} {1} on a table'.format(unique_token, class_token),\n]\n\nLive Subject Prompts\n\n"
        "prompt_list = [\n'a {0} {1} running'.format(unique_token, class_token)\n]\n"
    )
    classes, objects, live = parse_prompts_and_classes(text)
    assert classes == {"mug": "cup", "dog9": "dog"}
    assert objects == ["a {0} {1} on a table"] and live == ["a {0} {1} running"]
    with pytest.raises(UserError, match="subject_name,class"):
        parse_prompts_and_classes("hello\n")
    with pytest.raises(UserError, match="Live Subject Prompts"):
        parse_prompts_and_classes(text.split("Live Subject")[0])


def _copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "db"
    shutil.copytree(SAMPLE, root)
    for p in root.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    root.chmod(0o755)
    return root


@needs_sample
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "prompts_and_classes.txt").unlink(), "has no prompts_and_classes.txt"),
        (lambda r: shutil.rmtree(r / "teapot"), "subject 'teapot' has no folder"),
        (lambda r: [p.unlink() for p in (r / "teapot").iterdir()], "subject 'teapot': no images"),
    ],
)
def test_missing_layout_pieces_are_one_line_errors(tmp_path, damage, message):
    root = _copy_sample(tmp_path)
    damage(root)
    with pytest.raises(UserError, match=message):
        load_dreambench(root, subjects=["teapot"])


@needs_sample
def test_missing_layout_piece_through_the_cli_exits_2(tmp_path, capsys):
    root = _copy_sample(tmp_path)
    shutil.rmtree(root / "dog")
    config = tmp_path / "s.yaml"
    config.write_text(
        f"base: x\nbenchmark: {{name: dreambench, root: {root}, subjects: [dog]}}\n"
        "guidance: {cfg: {scale: 3}}\nmetrics: [clip_t]\n"
    )
    assert run(["sweep", str(config), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"steerguide: error: DreamBench subject 'dog' has no folder '{root / 'dog'}'"]


def test_unknown_benchmark_and_unlisted_subject(tmp_path):
    with pytest.raises(UserError, match="unknown benchmark 'imagenet'; expected one of dreambench, toy"):
        load_benchmark({"name": "imagenet"})
    with pytest.raises(UserError, match="benchmark.root: required"):
        load_benchmark({"name": "dreambench"})
    if SAMPLE.is_dir():
        with pytest.raises(UserError, match="'unicorn' is not listed"):
            load_dreambench(SAMPLE, subjects=["unicorn"])
