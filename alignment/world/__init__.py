"""The embedded test world: procedurally generated tasks with verifiable answers (``tasks``), their data splits
(``splits``, ``sizes``), the verifier (``verifier``, ``ranker``), fresh prompts (``prompts``), and the builders of
its tokenizer (``tokenizer``) and small pretrained base model (``tiny_model``, ``pretrain``). Everything else in
the library is product code that works on any model and data."""
