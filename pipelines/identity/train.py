"""Estimating the model's parameters from each run's data, and keeping a reviewed prior where it cannot.

The chance that two random records match comes from the deterministic rules, u from random sampling
at any size, and m from expectation maximisation seeded with the priors. Where the data cannot support
an estimate (too few rule pairs or random pairs, a level seen too rarely or mostly among one person's
records, an EM session with too few pairs, a level EM never observed) the prior of model.json is kept,
and `estimates` says so, and why, per parameter.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import duckdb

from pipelines.identity.config import IdentityConfig

_LAMBDA = "probability_two_random_records_match"


@dataclass(slots=True)
class Trained:
    settings: dict[str, Any]  # splink settings with the parameters to predict with
    estimates: dict[str, Any] = field(default_factory=dict)  # per parameter: estimated or prior, and why
    trained: str = "priors"  # em (m estimated), u (u and maybe lambda only) or priors (nothing estimated)


def _levels(settings: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (c["output_column_name"], level.get("label_for_charts", str(i)), level)
        for c in settings["comparisons"]
        for i, level in enumerate(c["comparison_levels"])
        if not level.get("is_null_level")
    ]


def _pairs(sp: duckdb.DuckDBPyConnection, table: str, rule: str) -> int:
    """The number of distinct record pairs a blocking rule (SQL over l. and r.) selects."""
    sql = f"SELECT count(*) FROM {table} l JOIN {table} r ON l.unique_id < r.unique_id AND ({rule})"
    return int(sp.execute(sql).fetchall()[0][0])


def _saved(linker: Any) -> dict[str, Any]:
    settings = linker.misc.save_model_to_json()
    settings.pop("splink_version", None)
    settings.pop("linker_uid", None)
    return settings


def _changed(before: float | None, after: Any) -> bool:
    return isinstance(after, (int, float)) and not (
        before is not None and math.isclose(float(after), float(before), rel_tol=1e-12, abs_tol=0.0)
    )


def train(
    sp: duckdb.DuckDBPyConnection, db_api: Any, frame: Any, cfg: IdentityConfig, records: int
) -> Trained:
    """Estimate what the data supports; returns the settings to predict with and the per-parameter record."""
    from splink import Linker

    t = cfg.thresholds
    priors = copy.deepcopy(cfg.model)
    priors["blocking_rules_to_generate_predictions"] = list(cfg.blocking)
    table = frame.physical_name
    out = Trained(settings=priors)
    levels: dict[str, dict[str, Any]] = {}
    out.estimates = {"random_pairs": 0, "em_sessions": [], "levels": levels}

    # lambda from the deterministic rules, when they find enough pairs to say anything.
    min_rule_pairs = int(t.get("min_pairs_for_prior", 10))
    found = sum(_pairs(sp, table, rule) for rule in t["prior_blocking_rules"])
    settings = copy.deepcopy(priors)
    if found >= min_rule_pairs:
        linker = Linker(frame, settings, log_level=None)
        linker.training.estimate_probability_two_random_records_match(
            t["prior_blocking_rules"], recall=float(t.get("prior_recall", 0.7))
        )
        settings = _saved(linker)
        out.estimates[_LAMBDA] = {"source": "deterministic rules", "pairs": found}
    else:
        out.estimates[_LAMBDA] = {
            "source": "prior",
            "why": f"the deterministic rules find {found} pairs (fewer than {min_rule_pairs})",
        }
    match_rate = float(settings[_LAMBDA])

    # u: random pairs are non-matches, but for the few that are the same person's records; a level
    # whose random pairs would be mostly such matches (an exact birth date among many duplicates)
    # cannot be estimated this way.
    all_pairs = records * (records - 1) // 2
    sampled = min(all_pairs, int(float(t.get("u_max_pairs", 1e6))))
    out.estimates["random_pairs"] = sampled
    min_pairs = int(t.get("min_random_pairs_for_u", 1000))
    min_seen = float(t.get("min_level_pairs_for_u", 10))
    max_share = float(t.get("max_match_share_for_u", 0.5))
    before = copy.deepcopy(settings)
    if sampled >= min_pairs:
        linker = Linker(frame, settings, log_level=None)
        linker.training.estimate_u_using_random_sampling(max_pairs=float(sampled), seed=1)
        settings = _saved(linker)
    for (name, label, prior), (_, _, now) in zip(_levels(before), _levels(settings), strict=True):
        entry = levels.setdefault(f"{name}: {label}", {})
        u = now.get("u_probability")
        seen = float(u) * sampled if isinstance(u, (int, float)) else 0.0
        share = match_rate * float(prior.get("m_probability") or 0.0) / float(u) if seen else 0.0
        if sampled < min_pairs:
            why = f"only {sampled} random pairs (fewer than {min_pairs})"
        elif not _changed(prior.get("u_probability"), u):
            why = "level not seen among the random pairs"
        elif seen < min_seen:
            why = f"level seen in about {seen:.0f} random pairs (fewer than {min_seen:.0f})"
        elif share > max_share:
            why = (
                f"about {share:.0%} of the random pairs at this level are expected to be one person's "
                f"records (more than {max_share:.0%})"
            )
        else:
            entry["u"] = {"source": "sampled", "pairs": round(seen), "match_share": round(share, 4)}
            continue
        entry["u"] = {"source": "prior", "why": why}
        now["u_probability"] = prior.get("u_probability")
    out.trained = "u" if any(e["u"]["source"] == "sampled" for e in levels.values()) else "priors"
    linker = Linker(frame, settings, log_level=None)

    # m by EM, seeded with the priors, in each session whose blocked pairs are enough to learn from.
    # A session over more than em_max_pairs blocked pairs learns from a deterministic sample of them
    # (splink keeps a record on each side by a hash of its id), so that its working set does not grow
    # with the number of pairs; matches and non-matches are kept alike, so m is estimated the same.
    min_em = int(t.get("min_pairs_for_em", 1000))
    max_em = int(float(t.get("em_max_pairs", 0))) or None
    ran = False
    for rule in t["em_blocking_rules"]:
        n = _pairs(sp, table, rule)
        session: dict[str, Any] = {"blocking_rule": rule, "pairs": n, "ran": n >= min_em}
        if n >= min_em:
            sample = max_em if max_em is not None and n > max_em else None
            if sample is not None:
                session["sampled_pairs"] = sample
            linker.training.estimate_parameters_using_expectation_maximisation(rule, max_pairs=sample)
            ran = True
        else:
            session["why"] = f"{n} blocked pairs (fewer than {min_em})"
        out.estimates["em_sessions"].append(session)
    trained = _saved(linker)
    for (name, label, before), (_, _, now) in zip(_levels(settings), _levels(trained), strict=True):
        entry = levels[f"{name}: {label}"]
        if not ran:
            entry["m"] = {"source": "prior", "why": "no EM session had enough blocked pairs"}
        elif _changed(before.get("m_probability"), now.get("m_probability")):
            entry["m"] = {"source": "em"}
        else:
            entry["m"] = {
                "source": "prior",
                "why": "not estimated: level not observed, or its comparison blocked on, in every EM session",
            }
            now["m_probability"] = before.get("m_probability")
    if ran:
        out.trained = "em"
    out.settings = trained
    return out
