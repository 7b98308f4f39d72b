"""Shared fixtures: tiny random causal LMs (GPT-2, Llama and eight more families) with a tokenizer trained in memory.

Everything here is offline, deterministic and small enough to run in seconds on two CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

def load_benchmark(name: str):
    """A script of ``benchmarks/`` (not a package) imported by its path, for testing its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOKENIZER_TEXT = [
    "Article: The team won the final match of the season.\nTopic: Sports",
    "Article: Stocks fell as the central bank raised interest rates.\nTopic: Business",
    "Article: Leaders met in Geneva to discuss the peace treaty.\nTopic: World",
    "Article: A new chip doubles the speed of scientific computing.\nTopic: Sci/Tech",
    "World Sports Business Sci/Tech news science technology finance passage query answer",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}-_/",
]


def train_tiny_tokenizer(vocab_size: int = 384):
    """A byte-level BPE tokenizer trained in memory, wrapped for transformers (pad = eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_TEXT * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )


# Hidden sizes shared by every tiny architecture: 2 layers, width 32, 2 heads, MLP 64, 256 positions.
_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256)
_SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _tiny_configs(vocab_size: int) -> dict:
    """kind → (config class name, model class name, config kwargs) of every tiny architecture.

    Families differ where checkpoints in the wild differ: tied or untied heads, fused q/k/v
    (GPT-NeoX, Phi-3, Falcon, BLOOM), GQA, biases (Qwen2), logit soft-capping and sliding windows
    (Gemma2, Mistral), OPT's MLP on flattened (B·T, H) rows, Falcon's parallel attention and
    BLOOM's ALiBi (no position ids)."""
    gqa = dict(_TINY, intermediate_size=64, num_key_value_heads=1, vocab_size=vocab_size, **_SPECIAL)
    return {
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                     dict(_TINY, intermediate_size=64, vocab_size=vocab_size, tie_word_embeddings=False, **_SPECIAL)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(gqa, tie_word_embeddings=True)),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(gqa, sliding_window=128, tie_word_embeddings=False)),
        "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
                   dict(gqa, head_dim=16, query_pre_attn_scalar=16, sliding_window=128, tie_word_embeddings=True,
                        final_logit_softcapping=2.0, attn_logit_softcapping=5.0)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM",
                 dict(gqa, original_max_position_embeddings=256, tie_word_embeddings=False)),
        "opt": ("OPTConfig", "OPTForCausalLM",
                dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
                     ffn_dim=64, word_embed_proj_dim=32, vocab_size=vocab_size, tie_word_embeddings=True,
                     **_SPECIAL)),
        "falcon": ("FalconConfig", "FalconForCausalLM",
                   dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=vocab_size,
                        tie_word_embeddings=True, **_SPECIAL)),
        "bloom": ("BloomConfig", "BloomForCausalLM",
                  dict(hidden_size=32, n_layer=2, n_head=2, vocab_size=vocab_size, tie_word_embeddings=True,
                       **_SPECIAL)),
    }


# Every architecture ``build_tiny_model`` knows (tests/test_families.py runs them all).
TINY_KINDS = ("gpt2", "llama", "gpt_neox", "qwen2", "mistral", "gemma2", "phi3", "opt", "falcon", "bloom")


def build_tiny_model(kind: str, vocab_size: int, seed: int = 0):
    """A 2-layer random causal LM of the given architecture (one of ``TINY_KINDS``); 'gpt2' and
    'llama' have tied embeddings, the others follow ``_tiny_configs``."""
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        )
        return GPT2LMHeadModel(config).eval()
    if kind == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
        return LlamaForCausalLM(config).eval()
    config_class, model_class, kwargs = _tiny_configs(vocab_size)[kind]
    return getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs)).eval()


def save_tiny_model(path, kind: str, seed: int = 0) -> str:
    tokenizer = train_tiny_tokenizer()
    model = build_tiny_model(kind, len(tokenizer), seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """Path of a saved tiny random GPT-2 (Conv1D layers, tied embeddings) with its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Path of a saved tiny random Llama (Linear layers, GQA, tied embeddings) with its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Each test gets the test run's shared cache folder and no third-party plugins unless it asks."""
    monkeypatch.setenv("LM_EVAL_APPROX_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("LM_EVAL_APPROX_LOAD_PLUGINS", "")
    yield
    from lm_eval_approx.plugins.registry import reset_plugins

    reset_plugins()


@pytest.fixture
def mirror():
    """The real data mirror (LM_EVAL_APPROX_DATA, or ../shared/data); skips when absent."""
    from pathlib import Path

    path = os.environ.get("LM_EVAL_APPROX_DATA") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (Path(path) / "ag_news" / "test.jsonl").is_file():
        pytest.skip("data mirror not available")
    return Path(path)
