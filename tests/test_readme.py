"""The README is a product page that stays true: its Python example runs, its commands exist, its
links resolve, and it stays short."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lm_eval_approx.data.selection_file import SelectedExample
from lm_eval_approx.docs_reference import command_tree
from lm_eval_approx.training.recipe import TrainingRecipe
from _specs import AGNEWS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250
TOPICS = ["peace talks in the capital", "the team won the match", "stocks and profits rose", "a new chip and software"]
# The README's example at full size, and what makes it run on a tiny random model in seconds: each
# value must appear exactly once, so an edit of the example that drops one fails here first.
TINY = {
    '"smollm2-135m"': "{base!r}",
    '"experts/agnews"': "{expert!r}",
    '"seed:wikitext2+seed:dbpedia", corpus_size=3000': "{corpus!r}, corpus_size=40",
    "k=300": "k=8, dim=64",
    "TrainingRecipe(epochs=2)": "TrainingRecipe(epochs=1, batch_size=8, validation_fraction=0.0)",
    "limit=200": "limit=8",
}


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def readme_python_example() -> str:
    """The Python block of the README's "Python API" section."""
    blocks = re.findall(r"```python\n(.*?)```", _section("Python API"), flags=re.S)
    assert len(blocks) == 1, "the Python API section holds exactly one python block"
    return blocks[0]


def test_readme_is_a_short_product_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    assert "make test" in text and "make demo" in text, "CI and users run the commands the README names"
    for word in ("session", "sessions"):
        assert not re.search(rf"\b{word}\b", text, flags=re.I), word
    assert not re.search(r"issue [0-9]|#[0-9][0-9]|\bours\b|our best", text, flags=re.I)


def test_readme_names_every_command():
    commands = _section("Commands")
    for path, _, _ in command_tree():
        assert f"lm-eval-approx {' '.join(path)} " in commands, f"README's Commands section lacks {path}"


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not re.match(r"^[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"


@pytest.fixture
def tiny_expert_and_data(tiny_llama, tmp_path):
    """θf = tiny Llama + a LoRA on labelled toy news, a 40-document candidate file, and a data mirror
    holding a toy AG News for lm-eval to score."""
    from lm_eval_approx.training.loop import train_adapter

    rows = [SelectedExample(id=str(i), text=f"{TOPICS[i % 4]} number {i}", label=i % 4) for i in range(32)]
    expert = train_adapter(tiny_llama, AGNEWS, rows, TrainingRecipe(epochs=2, batch_size=8, learning_rate=1e-2),
                           tmp_path / "expert", progress=False)
    corpus = tmp_path / "candidates.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{TOPICS[(i * 3) % 4]} candidate {i}"}) + "\n" for i in range(40)))
    news = tmp_path / "mirror" / "ag_news"
    news.mkdir(parents=True)
    for split in ("train", "test"):
        (news / f"{split}.jsonl").write_text(
            "".join(json.dumps({"text": f"{TOPICS[i % 4]} number {i}", "label": i % 4}) + "\n" for i in range(12)))
    return str(expert), str(corpus), tmp_path / "mirror"


def test_readme_python_example_runs(tiny_llama, tiny_expert_and_data, tmp_path):
    """The README's block, with the model, expert, corpus and sizes swapped for tiny ones, runs
    end to end in a fresh interpreter: approximation, then scoring in lm-eval."""
    expert, corpus, mirror = tiny_expert_and_data
    code = readme_python_example()
    for full, tiny in TINY.items():
        assert code.count(full) == 1, f"the README example no longer contains {full!r}"
        code = code.replace(full, tiny.format(base=tiny_llama, expert=expert, corpus=corpus))
    script = tmp_path / "readme_example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "LM_EVAL_APPROX_DATA": str(mirror), "LM_EVAL_APPROX_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()
    adapter = next(line for line in printed if line.endswith("adapter"))
    selection = next(line for line in printed if line.endswith(".jsonl"))
    assert Path(adapter).is_dir() and len(Path(selection).read_text().splitlines()) == 8
    assert "'acc,none'" in printed[-1]
