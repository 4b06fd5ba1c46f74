"""Linking source Patients into persons: features, rules, the model, decisions, clusters, person records."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from pipelines.identity.config import IdentityConfig, load_config
from pipelines.identity.decide import PairDecision, cluster, decide_pairs
from pipelines.identity.features import build_features
from pipelines.identity.model import ScoredPairs, score_pairs
from pipelines.identity.person import build_persons, load_members
from pipelines.identity.rules import Pair, rule_pairs, trusted_identifiers

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LinkResult:
    """Counts only: never a name, identifier or date of any record."""

    source_patients: int = 0
    persons: int = 0
    pairs: dict[str, int] = field(default_factory=dict)  # decision -> count
    methods: dict[str, int] = field(default_factory=dict)  # method -> count of links
    pairs_scored: int = 0
    model_version: str | None = None
    trained: str | None = None
    seconds: float = 0.0
    model: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__ if k != "model"}
        return out


def reviewed_decisions(con: duckdb.DuckDBPyConnection) -> dict[Pair, tuple[str, str]]:
    """The latest reviewer decision per pair, from every import so far."""
    rows = con.execute(
        """
        SELECT left_patient_id, right_patient_id, arg_max(decision, decided_at), arg_max(reviewer, decided_at)
        FROM ops.identity_decisions GROUP BY ALL
        """
    ).fetchall()
    return {(a, b): (d, r) for a, b, d, r in rows}


def link_patients(
    con: duckdb.DuckDBPyConnection, run_id: str, cfg: IdentityConfig | None = None
) -> LinkResult:
    """Decide every candidate pair, form persons; replace identity_links, person_map, person_records."""
    started = time.monotonic()
    cfg = cfg or load_config()
    result = LinkResult()
    result.source_patients = build_features(con, cfg)
    rules = rule_pairs(con, cfg)
    trusted = trusted_identifiers(con, cfg)
    reviewed = reviewed_decisions(con)
    scored: ScoredPairs | None = None
    if result.source_patients >= 2:
        scored = score_pairs(con, cfg, result.source_patients)
        result.pairs_scored, result.model_version, result.trained = (
            scored.compared,
            scored.model_version,
            scored.trained,
        )
        result.model = scored.model
    decisions = decide_pairs(cfg, rules, scored, reviewed, trusted)
    scored = None  # the decisions carry the scores; the pair list can go
    members = load_members(con)
    clusters = cluster(sorted(members), decisions, trusted)
    mapping, records = build_persons(con, cfg.survivorship, members, clusters, decisions)
    result.persons = len(records)
    result.pairs = dict(sorted(Counter(d.decision for d in decisions).items()))
    result.methods = dict(sorted(Counter(d.method for d in decisions if d.decision == "link").items()))
    _store(con, run_id, cfg, decisions, mapping, records, result)
    result.seconds = round(time.monotonic() - started, 3)
    log.info(
        "identity: %d source patients -> %d persons; pairs %s",
        result.source_patients,
        result.persons,
        result.pairs,
    )
    return result


def _store(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    cfg: IdentityConfig,
    decisions: list[PairDecision],
    mapping: list[tuple[str, str, bool]],
    records: list[tuple[str, str, int]],
    result: LinkResult,
) -> None:
    links = pa.table(
        {
            "l": [d.left for d in decisions],
            "r": [d.right for d in decisions],
            "method": [d.method for d in decisions],
            "rule": [d.rule for d in decisions],
            "model": [result.model_version if d.method == "model" else None for d in decisions],
            "score": pa.array([d.score for d in decisions], pa.float64()),
            "decision": [d.decision for d in decisions],
            "reviewer": [d.reviewer for d in decisions],
        }
    )
    persons = pa.table(
        {"p": [m[0] for m in mapping], "person": [m[1] for m in mapping], "s": [m[2] for m in mapping]}
    )
    person_rows = pa.table(
        {
            "person": [r[0] for r in records],
            "res": [r[1] for r in records],
            "n": pa.array([r[2] for r in records], pa.int32()),
        }
    )
    con.register("id_links_new", links)
    con.register("id_persons_new", persons)
    con.register("id_records_new", person_rows)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM ops.identity_links")
        con.execute(
            "INSERT INTO ops.identity_links "
            "SELECT l, r, method, rule, model, score, decision, reviewer, ?, now() FROM id_links_new",
            [run_id],
        )
        con.execute("DELETE FROM ops.person_map")
        con.execute("INSERT INTO ops.person_map SELECT p, person, s, ? FROM id_persons_new", [run_id])
        con.execute("DELETE FROM ops.person_records")
        con.execute(
            "INSERT INTO ops.person_records SELECT person, CAST(res AS JSON), n, ? FROM id_records_new",
            [run_id],
        )
        con.execute("DELETE FROM ops.identity_models WHERE run_id = ?", [run_id])
        if result.model is not None:
            con.execute(
                "INSERT INTO ops.identity_models VALUES (?, ?, ?, ?, ?, ?, ?, now())",
                [
                    run_id,
                    result.model_version,
                    result.trained,
                    cfg.version(),
                    result.source_patients,
                    result.pairs_scored,
                    orjson.dumps(result.model).decode(),
                ],
            )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        for name in ("id_links_new", "id_persons_new", "id_records_new"):
            con.unregister(name)


def save_model(path: Path, result: LinkResult) -> Path | None:
    """The trained model beside the run's report, so a run can be explained later."""
    if result.model is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result.model, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return path
