"""Tokenizer, tiny Llama builders, saving/reloading, pretraining and loading with real vLLM."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from alignment.world.pretrain import pretrain_lm, warmup_cosine_lr
from alignment.world.splits import WorldSizes, build_world, pretraining_texts, world_corpus
from alignment.world.tiny_model import (
    HEAD_DIM,
    MODEL_SIZES,
    build_tiny_model,
    count_parameters,
    save_model_dir,
)
from alignment.world.tokenizer import CHAT_TEMPLATE, render_chat, save_tokenizer, train_tokenizer

SIZES = WorldSizes(sft_train=60, sft_eval=6, pref_train=40, pref_eval=4, golden=10, candidates=10, prompts=10,
                   eval_per_family=4)
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 3?"},
        {"role": "assistant", "content": "15"}]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return pretraining_texts(0, 600)


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]) -> PreTrainedTokenizerBase:
    return train_tokenizer(world_corpus(build_world(0, SIZES)) + texts, vocab_size=512)


@pytest.fixture(scope="module")
def saved_tiny(tokenizer: PreTrainedTokenizerBase, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_tiny_model("tiny", tokenizer, seed=0)
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def test_tokenizer_round_trips_any_utf8(tokenizer: PreTrainedTokenizerBase) -> None:
    for text in ["Reverse the words: cat dog", "héllo wörld — ✓ 😀 漢字", "  tabs\tand\nnewlines  ", ""]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_splits_digits_and_adds_no_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("12345")["input_ids"]  # default add_special_tokens=True must still add nothing
    assert tokenizer.convert_ids_to_tokens(ids) == ["1", "2", "3", "4", "5"]
    assert tokenizer.bos_token_id not in tokenizer("What is 1 + 2?")["input_ids"]


def test_special_tokens_and_settings(tokenizer: PreTrainedTokenizerBase) -> None:
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>")
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    for role in ("<|user|>", "<|assistant|>", "<|system|>"):
        assert tokenizer.tokenize(f"x{role}\n") == ["x", role, "Ċ"]
    assert tokenizer.padding_side == "right"
    assert tokenizer.model_max_length == 2048
    assert len(tokenizer) <= 512


def test_chat_template_renders_exactly_one_bos(tokenizer: PreTrainedTokenizerBase) -> None:
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == ("<s><|system|>\nBe brief.</s>\n<|user|>\nWhat is 12 + 3?</s>\n"
                    "<|assistant|>\n15</s>\n")
    assert text == render_chat(CHAT)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids.count(tokenizer.eos_token_id) == 3
    prompt = tokenizer.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\nWhat is 12 + 3?</s>\n<|assistant|>\n" == render_chat(CHAT[1:2], True)
    with pytest.raises(Exception, match="unknown chat role"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)


def test_tokenizer_training_is_deterministic(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> None:
    again = train_tokenizer(world_corpus(build_world(0, SIZES)) + texts, vocab_size=512)
    assert again.get_vocab() == tokenizer.get_vocab()
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(texts, vocab_size=100)


def test_saved_tokenizer_reloads_identically(tokenizer: PreTrainedTokenizerBase, tmp_path: Path) -> None:
    save_tokenizer(tokenizer, tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = render_chat(CHAT) + " ünïcode 987"
    assert reloaded(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)[
        "input_ids"]
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.apply_chat_template(CHAT, tokenize=False) == render_chat(CHAT)
    assert (reloaded.pad_token_id, reloaded.padding_side) == (tokenizer.pad_token_id, "right")


def test_parameter_counts_and_config(tokenizer: PreTrainedTokenizerBase) -> None:
    tiny = build_tiny_model("tiny", tokenizer, seed=0)
    assert 2_000_000 <= count_parameters(tiny) <= 5_000_000
    assert 15_000_000 <= count_parameters(build_tiny_model("small", tokenizer, seed=0)) <= 30_000_000
    config = tiny.config
    assert config.head_dim == HEAD_DIM == config.hidden_size // config.num_attention_heads
    assert not config.tie_word_embeddings
    assert config.max_position_embeddings >= 512
    assert config._attn_implementation == "sdpa"
    assert (config.vocab_size, config.eos_token_id, config.pad_token_id) == (
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert set(MODEL_SIZES) == {"tiny", "small"}
    with pytest.raises(ValueError, match="unknown model size"):
        build_tiny_model("huge", tokenizer, seed=0)


def test_same_seed_same_weights(tokenizer: PreTrainedTokenizerBase) -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_tiny_model("tiny", tokenizer, seed=5)
    assert torch.equal(torch.rand(1), before)  # the global RNG is left untouched
    b = build_tiny_model("tiny", tokenizer, seed=5)
    c = build_tiny_model("tiny", tokenizer, seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_save_and_reload_gives_identical_logits(tokenizer: PreTrainedTokenizerBase, saved_tiny: Path) -> None:
    names = {p.name for p in saved_tiny.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    original = build_tiny_model("tiny", tokenizer, seed=0).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(saved_tiny).eval()
    assert (reloaded.generation_config.eos_token_id, reloaded.generation_config.pad_token_id) == (
        tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids = torch.tensor([tokenizer(render_chat(CHAT), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, reloaded(ids).logits)
    reloaded_tok = AutoTokenizer.from_pretrained(saved_tiny)
    assert reloaded_tok.chat_template == CHAT_TEMPLATE


def test_lr_schedule_warms_up_then_decays() -> None:
    assert warmup_cosine_lr(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine_lr(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_lr(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine_lr(55, 100, 10) == pytest.approx(0.55)
    assert warmup_cosine_lr(100, 100, 10) == pytest.approx(0.1)


def test_short_pretrain_reduces_loss_deterministically(tokenizer: PreTrainedTokenizerBase,
                                                        texts: list[str]) -> None:
    model = build_tiny_model("tiny", tokenizer, seed=0)
    losses = pretrain_lm(model, tokenizer, texts, steps=25, batch_size=8, lr=2e-3, seed=1, max_length=64,
                         show_progress=False)
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    runs = [pretrain_lm(build_tiny_model("tiny", tokenizer, seed=0), tokenizer, texts, steps=3, batch_size=8,
                        lr=2e-3, seed=1, max_length=64, show_progress=False) for _ in range(2)]
    assert runs[0] == runs[1]  # same model seed, texts and data seed: the same curve
    assert runs[0][0] == losses[0]
    with pytest.raises(ValueError, match="steps=0"):
        pretrain_lm(model, tokenizer, texts, steps=0, batch_size=8, lr=1e-3, seed=0, max_length=64)


@pytest.mark.slow
def test_vllm_loads_saved_tiny_model(saved_tiny: Path, tokenizer: PreTrainedTokenizerBase,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    vllm = pytest.importorskip("vllm")
    started = time.time()
    llm = vllm.LLM(model=str(saved_tiny), dtype="float32", max_model_len=256, seed=0, enforce_eager=True)
    prompt = render_chat([{"role": "user", "content": "Sort ascending: 3 1 2"}], add_generation_prompt=True)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
    outputs = llm.generate([prompt], params)
    print(f"vLLM load + generate took {time.time() - started:.1f}s")
    generated = outputs[0].outputs[0].token_ids
    assert len(generated) == 5
    # vLLM's greedy tokens match transformers' greedy decoding of the same weights.
    model = AutoModelForCausalLM.from_pretrained(saved_tiny).eval()
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        hf = model.generate(ids, max_new_tokens=5, do_sample=False, min_new_tokens=5)[0, ids.shape[1]:]
    assert list(generated) == hf.tolist()
