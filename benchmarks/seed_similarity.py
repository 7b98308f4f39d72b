"""How close each seed corpus of the data mirror is to each task's true training data.

The paper's seed-corpus heatmap says the candidate corpus matters more than the selection method.
Before spending hours of CPU on a candidate mixture, this measures each seed corpus against the
training split of each task with the leaderboard's own similarity measures (``similarity.py``):
Sinkhorn OT distance between MiniLM embeddings (lower is closer) and the share of the task's
vocabulary the seed sample covers (containment, higher is closer). Every corpus is sampled to the
same N documents with a fixed seed, so vocabulary sizes are comparable.

    LM_EVAL_APPROX_DATA=../shared/data python benchmarks/seed_similarity.py [--n 300] [--out FILE.md]

Prints (and writes with --out) one Markdown table per measure: rows are seed corpora, columns tasks;
a last row scores each task's own test split, the in-domain end of the scale.
"""

from __future__ import annotations

import argparse
import sys
import time

SEEDS = ("wikitext2", "dbpedia", "questions", "reuters10", "goemotions", "sst2")
TASKS = {"AG News": "ag_news:train", "MS MARCO": "msmarco:train"}
# The scale's in-domain end: each task's own test split against its training split.
IN_DOMAIN = {"AG News": "ag_news:test", "MS MARCO": "msmarco:test"}


def _texts(spec: str, n: int) -> list[str]:
    from lm_eval_approx.data.corpus import load_corpus

    return list(load_corpus(spec, limit=n, seed=0).texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="documents sampled from every corpus")
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)

    from lm_eval_approx.data.similarity import (
        sentence_embeddings,
        sinkhorn_distance,
        vocabulary_overlap,
    )

    started = time.perf_counter()
    targets = {name: _texts(spec, args.n) for name, spec in TASKS.items()}
    target_emb = {name: sentence_embeddings(texts) for name, texts in targets.items()}
    rows = []
    for seed in SEEDS:
        texts = _texts(f"seed:{seed}", args.n)
        emb = sentence_embeddings(texts)
        ot = {name: sinkhorn_distance(emb, target_emb[name]) for name in TASKS}
        containment = {name: vocabulary_overlap(texts, targets[name])[1] for name in TASKS}
        rows.append((seed, ot, containment))
    own = {name: _texts(spec, args.n) for name, spec in IN_DOMAIN.items()}
    rows.append(("(the task's own test split)",
                 {name: sinkhorn_distance(sentence_embeddings(own[name]), target_emb[name]) for name in TASKS},
                 {name: vocabulary_overlap(own[name], targets[name])[1] for name in TASKS}))
    lines = [f"Seed corpora against each task's training data ({args.n} documents each, seed 0; "
             f"{time.perf_counter() - started:.0f} s)", ""]
    for title, index, fmt in (("Sinkhorn OT distance (lower is closer)", 1, "{:.3f}"),
                              ("vocabulary containment (higher is closer)", 2, "{:.3f}")):
        lines += [f"**{title}**", "", "| seed corpus | " + " | ".join(TASKS) + " |",
                  "|---|" + "---|" * len(TASKS)]
        lines += [f"| {row[0]} | " + " | ".join(fmt.format(row[index][name]) for name in TASKS) + " |" for row in rows]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
