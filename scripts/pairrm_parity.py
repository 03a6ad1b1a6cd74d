"""Compare our PairRM with llm-blender's reference ``DebertaV2PairRM`` and its ``tokenize_pair``, offline.

llm-blender 0.0.2 (``pip install --no-deps llm-blender==0.0.2``, done by ``scripts/setup.sh``) does not import
as a package on transformers 5, so its two reference pieces are executed from the installed files without
importing the package: ``llm_blender/pair_ranker/pairrm.py`` (the model class of ``llm-blender/PairRM-hf``) is
loaded by file path, and ``tokenize_pair`` (the encoding that goes with it) is compiled on its own from
``llm_blender/blender/blender_utils.py``, whose module-level imports need llm-blender's full dependency set.

For each tokenizer and truncation setting, a random reference model is saved with its own ``save_pretrained``
(the format of the real checkpoint), loaded with our :func:`load_pairrm`, and both models score the same
(instruction, candidate A, candidate B) triples, each encoded by its own side. The table shows whether the
state dicts and the input ids are identical and the largest absolute logit difference::

    python scripts/pairrm_parity.py                     # tiny random checkpoints, two tokenizer kinds
    python scripts/pairrm_parity.py --model DIR         # also a local PairRM-hf directory (e.g. the real one)
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.metadata
import importlib.util
import tempfile
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignment.ranking.pairrm_model import (
    CANDIDATE_MAX_TOKENS,
    PREFIX_TOKENS,
    SOURCE_MAX_TOKENS,
    encode_pairs,
    load_pairrm,
)
from alignment.ranking.tiny import build_pairrm_checkpoint, pairrm_config, pairrm_tokenizer

DISTRIBUTION = "llm-blender"
MODEL_FILE = "llm_blender/pair_ranker/pairrm.py"
ENCODING_FILE = "llm_blender/blender/blender_utils.py"
TOLERANCE = 1e-5
# Short limits that make tokenize_pair truncate sources and candidates (the real ones are 1224 / 412).
TRUNCATING_LIMITS = (24, 12)

Triple = tuple[str, str, str]
TRIPLES: tuple[Triple, ...] = (
    ("hello!", "hi!", "f**k off!"),
    ("I love you!", "I hate you!", "I love you, too!"),
    ("What is the capital of France?", "Paris is the capital of France.", "It is Lyon."),
    ("What is 3 + 4?", "7", "The answer is 8."),
    ("Count the letters in banana.", "six", ""),
    ("", "an answer to nothing", "another answer"),
    ("Sort these numbers: 5 2 9 1.", "1 2 5 9", "1 2 5 9"),
    ("Reverse the words: red blue green.", "green blue red", "red blue green"),
    ("Explain   why\tthe sky\nis blue.", "Rayleigh scattering.\n\nShort waves scatter more.", "Because."),
    ("Translate: café au lait", "coffee with milk", "naïve résumé 日本"),
    ("Write a long story. " * 12, "Once upon a time " * 15, "The end."),
    ("Summarize.", "word " * 40, "short"),
    ("Is [SEP] a special token?", "Yes, [SEP] separates parts.", "No."),
    ("List three colors.", "red, blue, green", "1. red\n2. blue\n3. green"),
    ("Say nothing.", "", ""),
    ("What is 12 * 12?", "144", "one hundred and forty-four"),
    ("Name a prime number greater than 10.", "11", "9"),
    ("Give me a haiku about rain.", "soft rain on the roof / the night listens / sleep comes", "Rain is wet."),
)


# --- the reference, executed from the installed llm-blender files ------------------------------------------


def blender_file(relative: str) -> Path:
    """Path of ``relative`` inside the installed llm-blender distribution (never imported as a package)."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise RuntimeError(f"{DISTRIBUTION} is not installed: pip install --no-deps {DISTRIBUTION}==0.0.2 "
                           "(scripts/setup.sh does this)") from error
    path = Path(str(distribution.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {DISTRIBUTION} {distribution.version}")
    return path


def reference_model_class() -> Any:
    """llm-blender's ``DebertaV2PairRM``, from its own file loaded by path."""
    path = blender_file(MODEL_FILE)
    spec = importlib.util.spec_from_file_location("llm_blender_reference_pairrm", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot be loaded as a module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DebertaV2PairRM


def reference_function(relative: str, name: str) -> Callable[..., Any]:
    """Function ``name`` compiled alone from llm-blender's file ``relative`` (the file's imports are skipped)."""
    path = blender_file(relative)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[ast.stmt] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    if len(found) != 1:
        raise LookupError(f"{path}: expected one top-level function {name!r}, found {len(found)}")
    namespace: dict[str, Any] = {"List": list, "torch": torch}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(path), "exec"), namespace)
    return typing.cast(Callable[..., Any], namespace[name])


def reference_tokenize_pair() -> Callable[..., Any]:
    """llm-blender's ``tokenize_pair(tokenizer, sources, candidate1s, candidate2s, source_max_length,
    candidate_max_length)``: the PairRM-hf encoding, padded to ``source_max_length + 2 * candidate_max_length``."""
    return reference_function(ENCODING_FILE, "tokenize_pair")


def reference_config(tokenizer: Any, dims: dict[str, int] | None = None) -> Any:
    """A tiny DeBERTa-v3 style config carrying the attributes ``DebertaV2PairRM`` reads."""
    config = pairrm_config(len(tokenizer), int(tokenizer.pad_token_id), dims)
    source, cand1, cand2, cand = (tokenizer.convert_tokens_to_ids(token) for token in PREFIX_TOKENS)
    config.source_prefix_id, config.cand1_prefix_id, config.cand2_prefix_id = source, cand1, cand2
    config.cand_prefix_id, config.sep_token_id = cand, tokenizer.sep_token_id
    config.architectures = ["DebertaV2PairRM"]
    return config


def random_reference_model(config: Any, seed: int) -> Any:
    """A seeded ``DebertaV2PairRM`` with weights large enough that candidates visibly move the logit."""
    model_class = reference_model_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(copy.deepcopy(config))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.dim() == 2 and "LayerNorm" not in name:
                    parameter.normal_(0.0, 0.3)
    return model.eval()


# --- tokenizers ------------------------------------------------------------------------------------------


def unigram_deberta_tokenizer(texts: Sequence[str]) -> Any:
    """A ``DebertaV2Tokenizer`` (SentencePiece-style Unigram, as PairRM's) over the words and characters of
    ``texts``, with the prefix tokens added the way llm-blender adds them (``add_tokens``, not special)."""
    from transformers import DebertaV2Tokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({word for text in texts for word in text.split()})
    chars = sorted({char for text in texts for char in text if not char.isspace()})
    vocab = [(token, 0.0) for token in specials] + [("▁", -3.0)]
    vocab += [(f"▁{word}", -2.0 - 0.01 * len(word)) for word in words]
    vocab += [(char, -6.0) for char in chars] + [(f"▁{char}", -5.0) for char in chars]
    tokenizer = DebertaV2Tokenizer(vocab=vocab, model_max_length=2048)
    tokenizer.add_tokens(list(PREFIX_TOKENS))
    return tokenizer


def tokenizers() -> dict[str, Any]:
    """The tokenizer kinds compared: PairRM's kind (DeBERTa-v2 Unigram) and the project's tiny BPE one."""
    texts = [text for triple in TRIPLES for text in triple]
    return {"deberta-v2-unigram": unigram_deberta_tokenizer(texts), "tiny-bpe": pairrm_tokenizer(texts)}


# --- the comparison --------------------------------------------------------------------------------------


@dataclass
class ParityRow:
    """One checkpoint x truncation setting compared on every triple."""

    checkpoint: str
    limits: tuple[int, int]
    triples: int
    same_state_dict: bool
    same_ids: bool
    truncated: tuple[int, int]
    max_abs_diff: float
    max_abs_logit: float
    outcomes_agree: bool

    @property
    def passed(self) -> bool:
        return self.same_state_dict and self.same_ids and self.max_abs_diff <= TOLERANCE and self.outcomes_agree


def state_dict_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key and its shape."""
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def reference_inputs(tokenizer: Any, triples: Sequence[Triple], limits: tuple[int, int]) -> Any:
    """``tokenize_pair``'s encoding of ``triples`` (ids and mask, padded to the full budget)."""
    sources, firsts, seconds = (list(column) for column in zip(*triples, strict=True))
    return reference_tokenize_pair()(tokenizer, sources, firsts, seconds, limits[0], limits[1])


@torch.no_grad()
def compare_checkpoint(name: str, directory: Path, limits: tuple[int, int],
                       triples: Sequence[Triple] = TRIPLES) -> ParityRow:
    """Our loader and encoder against the reference class and ``tokenize_pair`` on ``directory``."""
    from transformers import AutoTokenizer

    theirs = reference_model_class().from_pretrained(str(directory), dtype=torch.float32).eval()
    ours, our_tokenizer = load_pairrm(str(directory))
    their_tokenizer = AutoTokenizer.from_pretrained(str(directory))
    sources, firsts, seconds = (list(column) for column in zip(*triples, strict=True))
    encoded = encode_pairs(our_tokenizer, sources, firsts, seconds, limits[0], limits[1])
    reference = reference_inputs(their_tokenizer, triples, limits)
    width = encoded.input_ids.shape[1]
    same_ids = (torch.equal(reference["input_ids"][:, :width], encoded.input_ids)
                and torch.equal(reference["attention_mask"][:, :width], encoded.attention_mask)
                and not bool(reference["attention_mask"][:, width:].any()))
    our_logits = ours(encoded.input_ids, encoded.attention_mask)
    their_logits = theirs(input_ids=reference["input_ids"], attention_mask=reference["attention_mask"]).logits
    return ParityRow(
        checkpoint=name, limits=limits, triples=len(triples),
        same_state_dict=state_dict_shapes(ours) == state_dict_shapes(theirs), same_ids=same_ids,
        truncated=(encoded.truncated_sources, encoded.truncated_candidates),
        max_abs_diff=float((our_logits - their_logits).abs().max()),
        max_abs_logit=float(their_logits.abs().max()),
        outcomes_agree=bool(torch.equal(our_logits > 0, their_logits > 0)))


def write_reference_checkpoint(tokenizer: Any, directory: Path, seed: int = 0) -> Path:
    """A random reference model saved by its own ``save_pretrained``, with ``tokenizer``: a tiny PairRM-hf."""
    model = random_reference_model(reference_config(tokenizer), seed)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def tiny_rows(workdir: Path) -> list[ParityRow]:
    """Reference-written checkpoints of both tokenizer kinds, each at PairRM's limits and at limits that force
    truncation; then a checkpoint written by our own ``save_pairrm`` (it must load in the reference class)."""
    rows = []
    for seed, (name, tokenizer) in enumerate(tokenizers().items()):
        directory = write_reference_checkpoint(tokenizer, workdir / name, seed)
        for limits in ((SOURCE_MAX_TOKENS, CANDIDATE_MAX_TOKENS), TRUNCATING_LIMITS):
            rows.append(compare_checkpoint(name, directory, limits))
    ours = build_pairrm_checkpoint(workdir / "save_pairrm", seed=3)
    rows.append(compare_checkpoint("ours (save_pairrm)", ours, (SOURCE_MAX_TOKENS, CANDIDATE_MAX_TOKENS)))
    return rows


def format_table(rows: Sequence[ParityRow]) -> str:
    """A fixed-width table, one line per row."""
    header = (f"{'checkpoint':<20} {'limits':>9} {'triples':>7} {'state_dict':>10} {'ids':>5} "
              f"{'truncated s/c':>13} {'max|diff|':>10} {'max|logit|':>10} {'agree':>5}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.checkpoint:<20} {f'{row.limits[0]}/{row.limits[1]}':>9} {row.triples:>7} "
                     f"{'same' if row.same_state_dict else 'DIFF':>10} {'same' if row.same_ids else 'DIFF':>5} "
                     f"{f'{row.truncated[0]}/{row.truncated[1]}':>13} {row.max_abs_diff:>10.2e} "
                     f"{row.max_abs_logit:>10.3f} {'yes' if row.outcomes_agree else 'NO':>5}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a local PairRM-hf directory to compare as well")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        rows = tiny_rows(Path(workdir))
    if args.model:
        rows.append(compare_checkpoint(Path(args.model).name, Path(args.model),
                                       (SOURCE_MAX_TOKENS, CANDIDATE_MAX_TOKENS)))
    print(format_table(rows))
    print(f"pass: identical state-dict keys/shapes and input ids, max |diff| <= {TOLERANCE:.0e}, same outcomes")
    raise SystemExit(0 if all(row.passed for row in rows) else 1)


if __name__ == "__main__":
    main()
