"""A small byte-level BPE tokenizer trained offline on the embedded world's text.

The tokenizer never adds special tokens on its own: the chat template carries the single BOS and each turn's
EOS, and the data layer tokenizes with ``add_special_tokens=False``. Digits are split one per token so that
arithmetic is learnable by a tiny model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, *ROLE_TOKENS)
MODEL_MAX_LENGTH = 2048

# One turn = "<|role|>\n" + content + eos + "\n"; a generation prompt opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role'] + ' (expected user, assistant or system)') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _build_untrained_tokenizer() -> Tokenizer:
    """A byte-level BPE pipeline: digits isolated first, then GPT-2 style byte mapping."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # ByteLevel post-processing only fixes offsets; it adds no BOS/EOS (the chat template does that).
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Deterministic for the same texts in the same order. Any UTF-8 string round-trips through
    encode/decode because the initial alphabet holds all 256 byte symbols.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least "
                         f"{256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tokenizer = _build_untrained_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return _wrap(tokenizer)


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained ``tokenizers.Tokenizer`` with special tokens, chat template and padding side."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Save ``tokenizer`` (with its chat template) to directory ``path``; reload with ``AutoTokenizer``."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` exactly as :data:`CHAT_TEMPLATE` does, without needing a tokenizer.

    Used to produce pretraining text before any tokenizer exists (the tokenizer is trained on it).
    """
    parts = [BOS_TOKEN]
    for message in messages:
        role = message["role"]
        if role not in ("user", "assistant", "system"):
            raise ValueError(f"unknown chat role {role!r} (expected user, assistant or system)")
        parts.append(f"<|{role}|>\n{message['content']}{EOS_TOKEN}\n")
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)
