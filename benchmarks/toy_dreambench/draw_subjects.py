"""Draw new toy subjects at random, by a rule fixed before any of them is run, into a subjects file.

    python benchmarks/toy_dreambench/draw_subjects.py --n 10 --seed 2026 --out FILE

The built-in subjects are ten draws of one kind: a rare token, a class noun, one of the renderer's subject
looks and two distinct colors outside the grammar's palette. More subjects of that kind narrow the
benchmark's confidence intervals (they resample subjects). Each draw here picks the token, class, look and
colors uniformly; a name (`<token>_<class>`) already taken, built-in or drawn, is drawn again. The photos'
contexts follow the world's rule (`default_photos`), seeded by the subject's name rather than its token,
so that two subjects sharing a token do not share their photos; they are written out in the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from steerguide.toyworld.render import SUBJECT_LOOKS, Look
from steerguide.toyworld.subjects import SUBJECT_COLORS, SUBJECTS, Subject, default_photos, subjects_yaml
from steerguide.toyworld.world import RARE_TOKENS, SHAPES


def draw_subjects(n: int, seed: int) -> list[Subject]:
    rng = np.random.default_rng(seed)
    taken = set(SUBJECTS)
    drawn: list[Subject] = []
    while len(drawn) < n:
        token = str(rng.choice(RARE_TOKENS))
        noun = str(rng.choice(SHAPES))
        kind = str(rng.choice(SUBJECT_LOOKS))
        a, b = (str(c) for c in rng.choice(list(SUBJECT_COLORS), 2, replace=False))
        name = f"{token}_{noun}"
        if name in taken:
            continue
        taken.add(name)
        look = Look(kind, SUBJECT_COLORS[a], SUBJECT_COLORS[b])
        drawn.append(Subject(token, noun, look, default_photos(name)))
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10, help="how many subjects")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", required=True, help="the subjects file to write")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    subjects = draw_subjects(args.n, args.seed)
    header = (
        f"# {args.n} toy subjects drawn by benchmarks/toy_dreambench/draw_subjects.py --n {args.n} "
        f"--seed {args.seed}\n"
    )
    Path(args.out).write_text(header + subjects_yaml(subjects))
    print(f"{args.out}: {', '.join(s.name for s in subjects)}")


if __name__ == "__main__":
    main()
