"""The real vLLM backend (CPU build in CI) on the session's embedded-world model: one engine for the module.

The engine serves a LoRA adapter through ``LoRARequest``; :meth:`VLLMBackend.without_adapter` gives the base
model from the same engine, so a single start-up covers base and adapter checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alignment.generation.base import (
    FINISH_LENGTH,
    BackendOptions,
    SamplingSettings,
    chat_prompt_ids,
    request_seed,
)
from alignment.generation.hf_backend import HFBackend
from alignment.generation.sources import ModelSource, resolve_model_source
from tests.test_generation import PROMPTS, make_lora_adapter, world_model_dir

pytest.importorskip("vllm")

MORE_PROMPTS = [*PROMPTS, "What is 70 - 15?", "Count the words: cat cat dog", "Uppercase the words: moon",
                "Sort the numbers: 9 4 7 1"]
ENGINE_OPTIONS = BackendOptions(lora_mode="vllm", kv_cache_gb=0.25, max_model_len=256, enforce_eager=True)


@pytest.fixture(scope="module")
def adapter_source(prepared_world: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    adapter = make_lora_adapter(world_model_dir(prepared_world), tmp_path_factory.mktemp("lora") / "adapter")
    return resolve_model_source(str(adapter))


@pytest.fixture(scope="module")
def engine(adapter_source: ModelSource) -> Iterator[object]:
    from alignment.generation.vllm_backend import VLLMBackend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in this process: ~seconds to start
        backend = VLLMBackend(adapter_source, ENGINE_OPTIONS)
        yield backend
        backend.close()


@pytest.fixture(scope="module")
def base(engine: object) -> object:
    return engine.without_adapter()  # type: ignore[attr-defined]


def encode(tokenizer: object, prompts: list[str]) -> list[list[int]]:
    return [chat_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def test_vllm_receives_the_chat_template_ids_once(base: object) -> None:
    tokenizer = base.tokenizer  # type: ignore[attr-defined]
    ids = encode(tokenizer, PROMPTS)
    completions = base.generate(ids, SamplingSettings(temperature=0.0, max_new_tokens=2))  # type: ignore[attr-defined]
    assert [c.prompt_token_ids for c in completions] == ids
    assert all(c.prompt_token_ids.count(tokenizer.bos_token_id) == 1 for c in completions)


def test_greedy_text_is_identical_in_vllm_and_hf(base: object, adapter_source: ModelSource) -> None:
    source = ModelSource(adapter_source.model, adapter_source.tokenizer)
    settings = SamplingSettings(n=2, temperature=0.0, max_new_tokens=24)
    with HFBackend(source) as hf:
        ids = encode(hf.tokenizer, MORE_PROMPTS)
        expected = hf.generate(ids, settings)
    got = base.generate(ids, settings)  # type: ignore[attr-defined]
    assert [c.texts for c in got] == [c.texts for c in expected]
    assert [c.finish_reasons for c in got] == [c.finish_reasons for c in expected]
    assert [c.n_tokens for c in got] == [c.n_tokens for c in expected]
    assert any(text for c in got for text in c.texts)


def test_lora_request_generates_like_the_merged_adapter(engine: object, base: object,
                                                       adapter_source: ModelSource) -> None:
    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)
    with HFBackend(adapter_source) as merged:
        ids = encode(merged.tokenizer, MORE_PROMPTS)
        expected = [c.texts for c in merged.generate(ids, settings)]
    assert engine.adapter_mode == "vllm LoRARequest"  # type: ignore[attr-defined]
    assert [c.texts for c in engine.generate(ids, settings)] == expected  # type: ignore[attr-defined]
    assert [c.texts for c in base.generate(ids, settings)] != expected  # type: ignore[attr-defined]


def test_samples_depend_on_the_prompt_seed_not_the_batch(base: object) -> None:
    ids = encode(base.tokenizer, MORE_PROMPTS)  # type: ignore[attr-defined]
    settings = SamplingSettings(n=3, temperature=1.5, max_new_tokens=8)
    seeds = [request_seed(5, p) for p in MORE_PROMPTS]
    together = base.generate(ids, settings, seeds)  # type: ignore[attr-defined]
    alone = base.generate(ids[2:3], settings, seeds[2:3])  # type: ignore[attr-defined]
    assert alone[0].texts == together[2].texts
    assert len(together[2].texts) == 3 and len(set(together[2].texts)) > 1
    truncated = base.generate(ids[:1], SamplingSettings(temperature=0.0, max_new_tokens=1))  # type: ignore[attr-defined]
    assert truncated[0].finish_reasons == [FINISH_LENGTH] and truncated[0].n_tokens == [1]


@pytest.mark.slow
def test_merge_mode_serves_the_adapter_from_a_temporary_full_model(adapter_source: ModelSource) -> None:
    """A second engine, so slow: ``lora_mode=merge`` gives the LoRA outputs and removes its directory."""
    from alignment.generation.vllm_backend import VLLMBackend

    settings = SamplingSettings(temperature=0.0, max_new_tokens=16)
    with HFBackend(adapter_source) as merged:
        ids = encode(merged.tokenizer, MORE_PROMPTS)
        expected = [c.texts for c in merged.generate(ids, settings)]
    options = BackendOptions(lora_mode="merge", kv_cache_gb=0.25, max_model_len=256, enforce_eager=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        backend = VLLMBackend(adapter_source, options)
        temp_dir = backend._temp_dir
        assert backend.adapter_mode == "merged into a temporary directory" and temp_dir
        assert [c.texts for c in backend.generate(ids, settings)] == expected
        backend.close()
    assert not Path(temp_dir).exists()
