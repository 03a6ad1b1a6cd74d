"""Our AlpacaEval-format annotations scored by the optional ``alpaca_eval`` package's own metric functions.

This is a cross-check: the package reads the same annotations (``preference`` in [1, 2], 2 = the model wins) and
reports its numbers in its own convention, percentages (0-100). Install it with the ``alpaca-eval`` extra
(``pip install -e '.[alpaca-eval]'``; alpaca-eval 0.6.6 imports ``pkg_resources``, hence ``setuptools<82``).

* ``win_rate``: ``alpaca_eval.metrics.get_winrate``, which needs only the preferences.
* ``length_controlled_win_rate``: ``alpaca_eval.metrics.get_length_controlled_winrate``, a logistic model of the
  preference on the length difference and the instruction difficulty, regularised towards AlpacaEval's annotations
  of length-gamed baselines. Those come from ``df_gamed.csv`` in the ``tatsu-lab/alpaca_eval`` dataset on the HF
  Hub, and the difficulty is looked up by each row's ``index`` in AlpacaEval's 805-instruction set. It is computed
  only when that file is already in the local HF cache and every annotation has an ``index``; a model compared
  with its own outputs needs neither (50 by construction). Otherwise it is reported as unavailable, with the reason.

Nothing here downloads: the package's Hub look-ups run with the Hub client forced offline, and the package's
default of saving fitted GLM weights into its own install folder is turned off.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

GAMED_REPO = "tatsu-lab/alpaca_eval"
GAMED_FILE = "df_gamed.csv"
LENGTH_CONTROLLED_KEYS = ("length_controlled_winrate", "lc_standard_error")


def _plain(value: Any) -> Any:
    """Python scalars instead of numpy ones, so JSON writes numbers (``np.int64`` is not a JSON number)."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _unavailable(reason: str) -> dict[str, str]:
    return {"status": f"unavailable: {reason}"}


def _import_problem() -> str | None:
    """Why ``alpaca_eval.metrics`` cannot be imported here, or ``None`` when it can."""
    if importlib.util.find_spec("alpaca_eval") is None:
        return "the alpaca_eval package is not installed (the 'alpaca-eval' extra)"
    try:
        import alpaca_eval.metrics  # noqa: F401
    except Exception as error:  # e.g. setuptools>=82 has no pkg_resources, which alpaca_eval imports
        return f"the alpaca_eval package failed to import: {type(error).__name__}: {error}"
    return None


def _guarded(compute: Callable[[], Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """The package's result (only ``keys`` when given) as plain values, or why the package raised."""
    try:
        found = compute()
    except Exception as error:  # an optional cross-check must not fail the evaluation after the judging
        return _unavailable(f"alpaca_eval raised {type(error).__name__}: {error}")
    return {key: _plain(found[key]) for key in (keys or list(found))}


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Force the HF Hub client offline (cache only) whatever ``HF_HUB_OFFLINE`` said when it was imported."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _cached_gamed_annotations() -> str | None:
    """Local path of AlpacaEval's ``df_gamed.csv`` in the HF cache the package reads, or ``None``."""
    from alpaca_eval import constants
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(GAMED_REPO, GAMED_FILE, cache_dir=constants.DEFAULT_CACHE_DIR,
                                   repo_type="dataset")
    return found if isinstance(found, str) else None


def _is_self_comparison(annotations: Sequence[Mapping[str, Any]]) -> bool:
    return all(a.get("generator_1") == a.get("generator_2") for a in annotations)


def length_controlled_problem(annotations: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the length-controlled win rate cannot be computed offline from ``annotations``, or ``None``."""
    if not annotations:
        return "no annotations"
    models = {a.get("generator_2") for a in annotations}
    if len(models) != 1:
        return f"the annotations mix {len(models)} models (generator_2); the GLM is fitted per model"
    if _is_self_comparison(annotations):
        return None
    without_index = [row for row, a in enumerate(annotations, start=1) if not isinstance(a.get("index"), int)]
    if without_index:
        return (f"{len(without_index)} of {len(annotations)} annotations (first: row {without_index[0]}) have no "
                "integer 'index', the row's position in AlpacaEval's 805-instruction set that its instruction "
                "difficulty is looked up by")
    if _cached_gamed_annotations() is None:
        return (f"it needs {GAMED_FILE} of the HF Hub dataset {GAMED_REPO} (AlpacaEval's annotations of length-gamed "
                "baselines and instruction difficulties) in the local HF cache; it is not there, and nothing is "
                "downloaded here")
    return None


def alpaca_eval_metrics(annotations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``alpaca_eval`` package's win rate and length-controlled win rate of one model's annotations.

    ``annotations``: AlpacaEval annotation rows (``preference``, ``output_1``/``generator_1`` = reference,
    ``output_2``/``generator_2`` = model, optional ``index``). Values are percentages, as the package reports
    them; each part is ``{"status": "unavailable: <why>"}`` when it cannot be computed here.
    """
    problem = _import_problem()
    if problem is not None:
        return {"win_rate": _unavailable(problem), "length_controlled_win_rate": _unavailable(problem)}
    from alpaca_eval.metrics import get_winrate

    rows = [dict(a) for a in annotations]  # the package gets its own copies
    found: dict[str, Any] = {"win_rate": _guarded(lambda: get_winrate(rows))}
    problem = length_controlled_problem(rows)
    if problem is not None:
        found["length_controlled_win_rate"] = _unavailable(problem)
        return found

    def length_controlled() -> Mapping[str, Any]:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate  # needs scikit-learn, patsy

        with _hub_offline():
            return get_length_controlled_winrate(rows, save_weights_dir=None, is_add_glm_preference_inplace=False)

    found["length_controlled_win_rate"] = _guarded(length_controlled, LENGTH_CONTROLLED_KEYS)
    return found
