"""Reward models from a causal-LM directory: the head's read position, LoRA, save -> reload, and the ranker
encoding the same ids as reward-model training."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignment.data.collate import collate_preference
from alignment.data.rows import PreferenceRow
from alignment.data.tokenize import TokenizedPair, tokenize_preference
from alignment.models.loading import LoraSpec, load_tokenizer
from alignment.models.reward import build_reward_model, save_reward_model
from alignment.ranking.base import CandidateGroup
from alignment.ranking.reward_model import RewardModelRanker
from alignment.train.reward import pair_rewards, sequence_rewards
from alignment.world.tiny_model import build_tiny_model, save_model_dir
from alignment.world.tokenizer import train_tokenizer

FILLER = ("red", "blue", "green", "small", "large", "round", "soft", "old", "new", "quick")
GOOD, BAD = "apple", "stone"


def synthetic_rows(count: int, seed: int) -> list[PreferenceRow]:
    """Pairs whose chosen response contains ``apple`` and rejected one ``stone``, among random filler words."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        def response(word: str) -> str:
            words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
            words.insert(rng.randint(0, len(words)), word)
            return " ".join(words)

        messages = ({"role": "user", "content": f"Describe thing {index % 7} in a few words."},)
        rows.append(PreferenceRow(id=f"{seed}-{index}", messages=messages, chosen=response(GOOD),
                                  rejected=response(BAD)))
    return rows


def tokenize_rows(tokenizer: Any, rows: list[PreferenceRow], max_length: int = 128) -> list[TokenizedPair]:
    pairs = [tokenize_preference(tokenizer, row, max_length) for row in rows]
    assert all(pair is not None and not pair.truncated for pair in pairs)
    return [pair for pair in pairs if pair is not None]


def write_causal_lm(directory: Path) -> Path:
    """A tiny Llama causal LM (the project's builder) and a tokenizer trained on the synthetic texts."""
    texts = [text for row in synthetic_rows(200, seed=99) for text in (row.messages[0]["content"], row.chosen,
                                                                         row.rejected)]
    tokenizer = train_tokenizer(texts, vocab_size=320)
    return save_model_dir(build_tiny_model("tiny", tokenizer, seed=0), tokenizer, directory)


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_causal_lm(tmp_path_factory.mktemp("reward") / "lm")


def randomize_(model: Any, std: float = 0.05, seed: int = 0) -> None:
    """Make the LoRA B matrices and the head non-trivial (B starts at zero, so merging would be a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "score" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def test_head_reads_the_last_real_token_whatever_the_padding(causal_lm: Path) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer).eval()
    assert model.config.pad_token_id == tokenizer.pad_token_id and model.config.num_labels == 1
    batch = collate_preference(tokenize_rows(tokenizer, synthetic_rows(3, seed=1)), pad_id=0)  # not the pad id
    with torch.no_grad():
        rewards = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
        for row in range(batch["input_ids"].shape[0]):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row:row + 1, :length]
            hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
            assert float(model.score(hidden)[0]) == pytest.approx(float(rewards[row]), abs=1e-5)
    assert float(rewards.std()) > 0


def test_lora_trains_only_adapters_and_the_whole_score_head(causal_lm: Path) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer, lora=LoraSpec(r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "score.modules_to_save" in name for name in trainable)
    assert any("score.modules_to_save" in name for name in trainable)
    assert any("lora_" in name and "layers.0" in name for name in trainable)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_model_reloads_with_the_same_rewards_and_the_ranker_agrees(causal_lm: Path, tmp_path: Path,
                                                                        lora: bool) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer, lora=LoraSpec(r=4, alpha=8) if lora else None)
    randomize_(model)
    rows = synthetic_rows(4, seed=2)
    batch = collate_preference(tokenize_rows(tokenizer, rows), pad_id=int(tokenizer.pad_token_id))
    model.eval()
    with torch.no_grad():
        chosen, rejected = pair_rewards(model, batch)
    out = save_reward_model(model, tokenizer, tmp_path / "rm")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        again = pair_rewards(reloaded, batch)
    torch.testing.assert_close(torch.cat(again), torch.cat([chosen, rejected]), atol=1e-5, rtol=0)
    ranker = RewardModelRanker(str(out), batch_size=3, device="cpu")
    groups = [CandidateGroup(key=row.id, prompt=row.messages[0]["content"], messages=row.messages,
                             responses=(row.chosen, row.rejected)) for row in rows]
    scores = [group.scores for group in ranker.score_groups(groups)]
    torch.testing.assert_close(torch.tensor(scores), torch.stack([chosen, rejected], dim=1), atol=1e-5, rtol=0)
    if lora:  # merging really changed the weights: the reloaded model is not the base with a new head
        base = build_reward_model(str(causal_lm), tokenizer).eval()
        base.score.load_state_dict(reloaded.score.state_dict())
        with torch.no_grad():
            assert float((torch.cat(pair_rewards(base, batch)) - torch.cat(again)).abs().max()) > 1e-3


def ranker_for(directory: Path) -> RewardModelRanker:
    return RewardModelRanker(str(directory), batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def saved_rm(causal_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = load_tokenizer(str(causal_lm))
    return save_reward_model(build_reward_model(str(causal_lm), tokenizer), tokenizer,
                             tmp_path_factory.mktemp("saved") / "rm")


CONVERSATIONS = [
    ({"role": "user", "content": "Describe thing 3 in a few words."},),
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe thing 1."}),
    ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "red apple"},
     {"role": "user", "content": "and now?"}),
]
RESPONSES = ["red apple soft", "", "green stone</s>", "  quick  old\nnew"]


@pytest.mark.parametrize("template", [True, False], ids=["chat_template", "plain_fallback"])
def test_ranker_encodes_exactly_the_training_sequence(saved_rm: Path, template: bool) -> None:
    ranker = ranker_for(saved_rm)
    tokenizer = ranker.tokenizer
    if not template:
        tokenizer.chat_template = None
    for messages in CONVERSATIONS:
        for chosen, rejected in zip(RESPONSES, RESPONSES[1:] + RESPONSES[:1], strict=True):
            pair = tokenize_preference(tokenizer, PreferenceRow("x", messages, chosen, rejected), max_length=512)
            assert pair is not None and not pair.truncated
            prompt = messages[-1]["content"]
            assert ranker.encode(messages, prompt, chosen) == pair.prompt_ids + pair.chosen_ids
            assert ranker.encode(messages, prompt, rejected) == pair.prompt_ids + pair.rejected_ids
            assert pair.chosen_ids[-1] == tokenizer.eos_token_id
    assert ranker.counters().get("truncated_inputs", 0) == 0


def test_ranker_chat_template_encoding_renders_the_whole_conversation(saved_rm: Path) -> None:
    ranker = RewardModelRanker(str(saved_rm), device="cpu", encoding="chat_template")
    messages = CONVERSATIONS[0]
    ids = ranker.encode(messages, messages[0]["content"], "red apple")
    text = str(ranker.tokenizer.decode(ids))
    assert text.endswith("red apple</s>\n")  # the template's own end of turn, unlike the training encoding
    with pytest.raises(ValueError, match="encoding"):
        RewardModelRanker(str(saved_rm), device="cpu", encoding="other")


def test_saving_never_overwrites_silently(causal_lm: Path, saved_rm: Path) -> None:
    tokenizer = load_tokenizer(str(causal_lm))
    model = build_reward_model(str(causal_lm), tokenizer, seed=5)
    with pytest.raises(FileExistsError, match="already exists"):
        save_reward_model(model, tokenizer, saved_rm)
    before = (saved_rm / "model.safetensors").read_bytes()
    save_reward_model(model, tokenizer, saved_rm, overwrite=True)
    assert (saved_rm / "model.safetensors").read_bytes() != before  # seed 5 gives another head
    assert not [p for p in saved_rm.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_adapter_directories_and_tokenizers_without_pad_are_refused(causal_lm: Path, tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    tokenizer = load_tokenizer(str(causal_lm))
    with pytest.raises(ValueError, match="adapter"):
        build_reward_model(str(tmp_path), tokenizer)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="pad token"):
        build_reward_model(str(causal_lm), tokenizer)
