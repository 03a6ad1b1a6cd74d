"""The generation interface and the hf backend on the session's embedded-world model (no vLLM here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignment.generation.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    BackendOptions,
    SamplingSettings,
    chat_prompt_ids,
    cut_at_stop,
    request_seed,
)
from alignment.generation.factory import create_backend
from alignment.generation.hf_backend import HFBackend, left_pad, strip_trailing
from alignment.generation.sources import ModelSource, resolve_model_source

PROMPTS = ["What is 12 + 34?", "Uppercase the words: cat dog", "Reverse the words: sun moon star",
           "Sort the numbers: 3 1 2"]


def world_model_dir(run_dir: Path) -> Path:
    return run_dir / "round_00" / "prepare" / "model"


def make_lora_adapter(model_dir: Path, out_dir: Path, rank: int = 8, scale: float = 0.5) -> Path:
    """A saved peft adapter on q/v projections with large random weights, so it visibly changes outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def model_dir(prepared_world: Path) -> Path:
    return world_model_dir(prepared_world)


@pytest.fixture(scope="module")
def hf(model_dir: Path) -> HFBackend:
    return HFBackend(ModelSource(str(model_dir), str(model_dir)), BackendOptions(batch_size=3))


def encode(backend: HFBackend, prompts: list[str]) -> list[list[int]]:
    return [chat_prompt_ids(backend.tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def test_prompt_ids_are_the_chat_template_once_with_a_single_bos(hf: HFBackend) -> None:
    tokenizer = hf.tokenizer
    messages = [{"role": "user", "content": PROMPTS[0]}]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"]) if hasattr(expected, "keys") else list(expected)
    ids = chat_prompt_ids(tokenizer, messages)
    assert ids == expected
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids) == f"<s><|user|>\n{PROMPTS[0]}</s>\n<|assistant|>\n"


def test_hf_backend_feeds_exactly_the_given_ids(hf: HFBackend) -> None:
    ids = encode(hf, PROMPTS)
    completions = hf.generate(ids, SamplingSettings(temperature=0.0, max_new_tokens=4))
    assert [c.prompt_token_ids for c in completions] == ids


def test_hf_backend_reports_each_finished_batch(hf: HFBackend) -> None:
    finished: list[int] = []
    completions = hf.generate(encode(hf, PROMPTS), SamplingSettings(temperature=0.0, max_new_tokens=2),
                              on_done=finished.append)
    assert finished == [3, 1] and len(completions) == len(PROMPTS)  # batch_size=3


def test_left_padding_puts_prompts_at_the_right_edge() -> None:
    input_ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert strip_trailing([4, 9, 0, 0], 0) == [4, 9]


def test_batched_greedy_equals_one_prompt_at_a_time(hf: HFBackend) -> None:
    """Left padding and the attention mask must not change what a prompt gets (prompts differ in length)."""
    ids = encode(hf, PROMPTS)
    settings = SamplingSettings(temperature=0.0, max_new_tokens=12)
    batched = hf.generate(ids, settings)
    alone = [hf.generate([one], settings)[0] for one in ids]
    assert [c.texts for c in batched] == [c.texts for c in alone]
    assert len({len(i) for i in ids}) > 1


def test_greedy_repeats_one_answer_n_times_and_counts_tokens(hf: HFBackend) -> None:
    settings = SamplingSettings(n=3, temperature=0.0, max_new_tokens=32)
    completion = hf.generate(encode(hf, PROMPTS[:1]), settings)[0]
    assert len(set(completion.texts)) == 1 and len(completion.texts) == 3
    assert len(set(completion.finish_reasons)) == 1 and len(set(completion.n_tokens)) == 1
    text_tokens = len(hf.tokenizer(completion.texts[0], add_special_tokens=False)["input_ids"])
    if completion.finish_reasons[0] == FINISH_STOP:  # ended by EOS, which is counted but not in the text
        assert completion.n_tokens[0] == text_tokens + 1
    else:
        assert completion.n_tokens[0] == 32


def test_max_new_tokens_truncates_and_says_so(hf: HFBackend) -> None:
    completion = hf.generate(encode(hf, PROMPTS[:1]), SamplingSettings(temperature=0.0, max_new_tokens=1))[0]
    assert completion.finish_reasons == [FINISH_LENGTH] and completion.n_tokens == [1]


def test_stop_strings_end_the_response_and_are_not_included(hf: HFBackend) -> None:
    ids = encode(hf, ["Uppercase the words: cat dog hat star moon"])
    free = hf.generate(ids, SamplingSettings(temperature=0.0, max_new_tokens=16))[0].texts[0]
    assert len(free) >= 3, free
    stop = free[1:3]  # a string that occurs inside the free answer
    stopped = hf.generate(ids, SamplingSettings(temperature=0.0, max_new_tokens=16, stop=(stop,)))[0]
    assert stopped.texts[0] == free[: free.index(stop)]
    assert stopped.finish_reasons == [FINISH_STOP]


def test_sampling_is_reproducible_from_seeds_and_varies_with_them(hf: HFBackend) -> None:
    ids = encode(hf, PROMPTS)
    settings = SamplingSettings(n=4, temperature=1.5, max_new_tokens=8, seed=3)
    seeds = [request_seed(3, p) for p in PROMPTS]
    first, again = hf.generate(ids, settings, seeds), hf.generate(ids, settings, seeds)
    other = hf.generate(ids, settings, [s + 1 for s in seeds])
    assert [c.texts for c in first] == [c.texts for c in again]
    assert [c.texts for c in first] != [c.texts for c in other]
    assert all(len(c.texts) == 4 for c in first)


def test_settings_validation_names_every_problem() -> None:
    problems = SamplingSettings(n=0, temperature=-1, top_p=0, max_new_tokens=0, stop=("",)).validate()
    assert len(problems) == 5
    assert request_seed(0, "a") == request_seed(0, "a") != request_seed(1, "a")
    assert cut_at_stop("abc\n\ndef", ["\n\n", "c"]) == ("ab", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


def test_a_tokenizer_without_chat_template_is_refused(hf: HFBackend) -> None:
    class Plain:
        chat_template = None

    with pytest.raises(ValueError, match="chat_template"):
        chat_prompt_ids(Plain(), [{"role": "user", "content": "hi"}])


def test_model_sources_full_model_adapter_and_merged(model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_source(str(model_dir)) == ModelSource(str(model_dir), str(model_dir))
    assert resolve_model_source("org/model").adapter is None  # a Hub id is passed through
    adapter = make_lora_adapter(model_dir, tmp_path / "adapter")
    source = resolve_model_source(str(adapter))
    assert source == ModelSource(model=str(model_dir), tokenizer=str(model_dir), adapter=str(adapter))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/gone/machine/model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base_model_name_or_path"):
        resolve_model_source(str(adapter))
    assert resolve_model_source(str(adapter), base_model=str(model_dir)).model == str(model_dir)
    (adapter / "merged").mkdir()
    (adapter / "merged" / "config.json").write_text("{}")
    assert resolve_model_source(str(adapter)) == ModelSource(str(adapter / "merged"), str(adapter))


def test_hf_generates_from_an_adapter_like_from_its_merged_model(model_dir: Path, tmp_path: Path) -> None:
    from alignment.generation.sources import merge_adapter

    adapter = make_lora_adapter(model_dir, tmp_path / "adapter")
    source = resolve_model_source(str(adapter))
    merged = merge_adapter(source, tmp_path / "merged")
    settings = SamplingSettings(temperature=0.0, max_new_tokens=10)
    with HFBackend(source) as with_adapter, HFBackend(merged) as from_merged, \
            HFBackend(ModelSource(str(model_dir), str(model_dir))) as base:
        ids = encode(base, PROMPTS)
        adapted = [c.texts for c in with_adapter.generate(ids, settings)]
        assert adapted == [c.texts for c in from_merged.generate(ids, settings)]
        assert adapted != [c.texts for c in base.generate(ids, settings)]


def test_auto_falls_back_to_hf_and_says_why(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import alignment.generation.factory as factory

    source = ModelSource(str(model_dir), str(model_dir))
    monkeypatch.setattr(factory, "vllm_importable", lambda: False)
    choice = create_backend("auto", source)
    assert choice.backend.name == "hf" and choice.fallback_reason == "vllm is not installed"

    def broken(*_: object) -> None:
        raise RuntimeError("no engine today")

    monkeypatch.setattr(factory, "vllm_importable", lambda: True)
    monkeypatch.setattr(factory, "_vllm", broken)
    choice = create_backend("auto", source)
    assert choice.backend.name == "hf" and "no engine today" in str(choice.fallback_reason)
    with pytest.raises(RuntimeError, match="no engine today"):
        create_backend("vllm", source)
    with pytest.raises(ValueError, match="backend='tgi'"):
        create_backend("tgi", source)


def test_vllm_engine_arguments_follow_the_options() -> None:
    from alignment.generation.vllm_backend import engine_kwargs, vllm_lora_rank

    options = BackendOptions(dtype="bfloat16", tensor_parallel_size=4, kv_cache_gb=0.5, max_model_len=300, seed=7)
    kwargs = engine_kwargs("m", "t", options, lora_rank=12)
    assert kwargs["tensor_parallel_size"] == 4 and kwargs["dtype"] == "bfloat16" and kwargs["seed"] == 7
    assert kwargs["kv_cache_memory_bytes"] == 1 << 29 and kwargs["max_model_len"] == 300
    assert (kwargs["enable_lora"], kwargs["max_lora_rank"]) == (True, 16) and kwargs["trust_remote_code"] is False
    plain = engine_kwargs("m", "t", BackendOptions(), lora_rank=None)
    assert "enable_lora" not in plain and "kv_cache_memory_bytes" not in plain and "max_model_len" not in plain
    assert "enable_chunked_prefill" not in plain  # GPUs keep vLLM's default
    assert engine_kwargs("m", "t", BackendOptions(), lora_rank=None, cpu=True)["enable_chunked_prefill"] is False
    assert [vllm_lora_rank(r) for r in (1, 2, 8, 64, 300)] == [1, 8, 8, 64, 320]
    with pytest.raises(ValueError, match="exceeds"):
        vllm_lora_rank(1024)


def test_an_explicit_kv_cache_size_hides_vllms_environment_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from alignment.generation.vllm_backend import CPU_KV_CACHE_ENV, _env_hidden

    monkeypatch.setenv(CPU_KV_CACHE_ENV, "4")
    with _env_hidden(CPU_KV_CACHE_ENV, hide=True):
        assert CPU_KV_CACHE_ENV not in os.environ  # vLLM's CPU platform would let it override kv_cache_gb
    assert os.environ[CPU_KV_CACHE_ENV] == "4"
    with _env_hidden(CPU_KV_CACHE_ENV, hide=False):
        assert os.environ[CPU_KV_CACHE_ENV] == "4"


def test_stage_configs_report_every_generation_problem() -> None:
    from tests.conftest import compose_run

    run = compose_run("stage=generate", "stage.n=0", "stage.top_p=0", "stage.backend=tgi", "stage.lora_mode=x",
                      "stage.prompts_from=web", "stage.shard_size=0", "stage.stop=['']")
    problems = run.validate()
    for key in ("stage.n", "stage.top_p", "stage.backend", "stage.lora_mode", "stage.prompts_from",
                "stage.shard_size", "stage.stop"):
        assert any(p.startswith(key) for p in problems), (key, problems)
    run = compose_run("stage=create_instructions", "stage.source=web", "stage.rouge_threshold=0",
                      "stage.min_words=200", "stage.prompt_format=xml")
    problems = run.validate()
    for key in ("stage.source", "stage.rouge_threshold", "stage.min_words", "stage.prompt_format"):
        assert any(p.startswith(key) for p in problems), (key, problems)
