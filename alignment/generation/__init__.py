"""Generation behind one interface: ``base`` (settings, results, prompt encoding), ``hf_backend`` and
``vllm_backend`` (chosen by ``factory``), ``sources`` (models and LoRA adapters), ``sharding`` (resumable
data-parallel shards), ``responses`` (rows of responses.jsonl), and instruction creation: ``self_instruct``,
``rouge``, ``clustering``, ``world_prompts``. Submodules are imported on demand (vLLM/torch are heavy)."""
