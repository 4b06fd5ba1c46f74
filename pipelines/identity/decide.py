"""One decision per candidate pair (reviewer, rule, then model and guards) and the persons they make."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from pipelines.identity.config import IdentityConfig
from pipelines.identity.rules import conflicts

Trusted = dict[int, dict[str, set[str]]]  # node number -> system -> values


def classify(score: float, thresholds: dict) -> str:
    """The model's outcome for a match probability: link, review (between thresholds) or no_link."""
    if score >= float(thresholds["link"]):
        return "link"
    if score >= float(thresholds["review"]):
        return "review"
    return "no_link"


def decide_pairs(con: duckdb.DuckDBPyConnection, cfg: IdentityConfig, work: Path) -> None:
    """TEMP VIEW id_decisions (l, r, method, rule, score, decision, reviewer) from id_rule_pairs,
    id_scored, ops.identity_decisions and id_trusted; l and r are node numbers (id_nodes).

    The decisions are written part by part to Parquet files in `work`, not kept in DuckDB's pool: the
    view reads them, with the links the clustering refused (TEMP id_refused, empty until cluster())
    turned into reviews.

    A reviewer's decision wins; then a rule; then the model (classify's thresholds), capped by its guards;
    a link across a known conflict (different values of one trusted identifier) becomes a review.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE id_guards (name VARCHAR, outcome VARCHAR)")
    if cfg.guards:
        con.executemany(
            "INSERT INTO id_guards VALUES (?, ?)", [(g["name"], g["outcome"]) for g in cfg.guards]
        )
    t = cfg.thresholds
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_reviewed AS
        SELECT a.n AS l, b.n AS r, arg_max(d.decision, d.decided_at) AS decision,
            arg_max(d.reviewer, d.decided_at) AS reviewer
        FROM ops.identity_decisions d
        JOIN id_nodes a ON a.id = d.left_patient_id JOIN id_nodes b ON b.id = d.right_patient_id
        GROUP BY ALL;
        CREATE OR REPLACE TEMP TABLE id_refused (l INTEGER, r INTEGER);
        """
    )
    # The pairs are decided in parts (by a hash of the left record), each part's union and joins
    # alone in memory, so the working set stays the size of a part whatever the number of pairs.
    (pairs,) = con.execute(
        "SELECT (SELECT count(*) FROM id_scored) + (SELECT count(*) FROM id_rule_pairs) "
        "+ (SELECT count(*) FROM id_reviewed)"
    ).fetchall()[0]
    parts = max(1, -(-int(pairs) // int(t.get("decide_part_pairs", 250_000))))
    files = []
    for part in range(parts):
        files.append(work / f"decided-{part}.parquet")
        _decide_part(con, t, f"hash(l) % {parts} = {part}", files[-1])
    con.execute("DROP TABLE IF EXISTS id_candidates; DROP TABLE IF EXISTS id_conflicts")
    listed = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW id_decisions AS
        SELECT d.l, d.r, d.method,
            CASE WHEN f.l IS NULL THEN d.rule ELSE coalesce(d.rule, d.method) || '+cluster_conflict' END
                AS rule,
            d.score, CASE WHEN f.l IS NULL THEN d.decision ELSE 'review' END AS decision, d.reviewer
        FROM read_parquet([{listed}]) d LEFT JOIN id_refused f ON f.l = d.l AND f.r = d.r
        """
    )


def _decide_part(con: duckdb.DuckDBPyConnection, t: dict, part: str, path: Path) -> None:
    """The decisions of the candidate pairs whose left record satisfies `part`, into a Parquet file."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE id_candidates AS
        SELECT l, r FROM id_rule_pairs WHERE {part} UNION SELECT l, r FROM id_scored WHERE {part}
        UNION SELECT l, r FROM id_reviewed WHERE {part};
        CREATE OR REPLACE TEMP TABLE id_conflicts AS
        SELECT DISTINCT c.l, c.r FROM id_candidates c
        JOIN id_trusted a ON a.patient_id = c.l
        JOIN id_trusted b ON b.patient_id = c.r AND b.system = a.system
        WHERE NOT list_has_any(a.vals, b.vals);
        """
    )
    link, review = float(t["link"]), float(t["review"])
    con.execute(
        f"""
        COPY (
        WITH x AS (
            SELECT c.l, c.r, s.score, v.decision AS reviewed, v.reviewer, p.rule AS rule_name,
                p.outcome AS rule_outcome, k.l IS NOT NULL AS conflict,
                CASE WHEN s.score >= {link!r} THEN 'link' WHEN s.score >= {review!r} THEN 'review'
                    ELSE 'no_link' END AS model_outcome,
                s.guard, g.outcome AS guard_outcome
            FROM id_candidates c
            LEFT JOIN (SELECT * FROM id_scored WHERE {part}) s USING (l, r)
            LEFT JOIN (SELECT * FROM id_reviewed WHERE {part}) v USING (l, r)
            LEFT JOIN (SELECT * FROM id_rule_pairs WHERE {part}) p USING (l, r)
            LEFT JOIN id_conflicts k USING (l, r)
            LEFT JOIN id_guards g ON g.name = s.guard
        ),
        y AS (
            SELECT *,
                CASE WHEN guard IS NOT NULL AND model_outcome <> 'no_link' THEN guard_outcome
                    ELSE model_outcome END AS guarded,
                CASE WHEN guard IS NOT NULL AND model_outcome <> 'no_link' THEN guard END AS guard_rule
            FROM x
        )
        SELECT l, r,
            CASE WHEN reviewed IS NOT NULL THEN 'review' WHEN rule_name IS NOT NULL THEN 'rule'
                ELSE 'model' END AS method,
            CASE WHEN reviewed IS NOT NULL THEN 'reviewer_decision'
                WHEN rule_name IS NOT NULL AND conflict AND rule_outcome = 'link'
                    THEN rule_name || '+known_conflict'
                WHEN rule_name IS NOT NULL THEN rule_name
                WHEN conflict AND guarded = 'link' THEN 'known_conflict'
                ELSE guard_rule END AS rule,
            score,
            CASE WHEN reviewed IS NOT NULL THEN reviewed
                WHEN rule_name IS NOT NULL AND conflict AND rule_outcome = 'link' THEN 'review'
                WHEN rule_name IS NOT NULL THEN rule_outcome
                WHEN conflict AND guarded = 'link' THEN 'review'
                ELSE guarded END AS decision,
            CAST(CASE WHEN reviewed IS NOT NULL THEN reviewer END AS VARCHAR) AS reviewer
        FROM y
        ) TO '{str(path).replace("'", "''")}' (FORMAT parquet, ROW_GROUP_SIZE 16384)
        """
    )


def _components(con: duckdb.DuckDBPyConnection) -> None:
    """TEMP id_comp (node, comp): connected components of the link decisions among present Patients.

    Label propagation (each node takes its neighbours' smallest label) with pointer jumping: the labels
    only ever decrease, so it ends, after a number of rounds that grows with a component's diameter.
    It runs on the node numbers of id_nodes, given in id order (so the smallest number is the smallest
    id, and a component's label is the number of its smallest id).
    """
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_edges AS
        SELECT d.l AS a, d.r AS b FROM id_decisions d
        JOIN id_nodes a ON a.n = d.l AND a.present JOIN id_nodes b ON b.n = d.r AND b.present
        WHERE d.decision = 'link';
        INSERT INTO id_edges SELECT b, a FROM id_edges;
        CREATE OR REPLACE TEMP TABLE id_comp_n AS SELECT n AS node, n AS comp FROM id_nodes WHERE present;
        """
    )
    while True:
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE id_comp_next AS
            WITH nb AS (
                SELECT c.node, least(c.comp, coalesce(min(n.comp), c.comp)) AS comp
                FROM id_comp_n c LEFT JOIN id_edges e ON e.a = c.node LEFT JOIN id_comp_n n ON n.node = e.b
                GROUP BY c.node, c.comp
            )
            SELECT nb.node, least(nb.comp, j.comp) AS comp FROM nb JOIN nb j ON j.node = nb.comp
            """
        )
        changed = con.execute(
            "SELECT count(*) FROM id_comp_n c JOIN id_comp_next n USING (node) WHERE c.comp <> n.comp"
        ).fetchall()[0][0]
        con.execute("CREATE OR REPLACE TEMP TABLE id_comp_n AS SELECT * FROM id_comp_next")
        if not changed:
            break
    con.execute(
        """
        DROP TABLE IF EXISTS id_comp;
        ALTER TABLE id_comp_n RENAME TO id_comp;
        DROP TABLE id_comp_next; DROP TABLE id_edges;
        """
    )


class _Clusters:
    """Union-find that refuses a merge across a trusted-identifier conflict or a reviewer's no-link."""

    def __init__(self, ids: list[int], trusted: Trusted, apart: set[tuple[int, int]]) -> None:
        self.parent = {i: i for i in ids}
        self.members = {i: [i] for i in ids}
        self.trusted = {i: {s: set(v) for s, v in trusted.get(i, {}).items()} for i in ids}
        self.apart: dict[int, set[int]] = {}
        for a, b in apart:
            self.apart.setdefault(a, set()).add(b)
            self.apart.setdefault(b, set()).add(a)
        self.forbidden = {i: set(self.apart.get(i, ())) for i in ids}

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, reviewed: bool = False) -> bool:
        """Merge a's and b's clusters; a reviewer's link may cross a conflict, never a reviewer's no-link."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if self.forbidden[ra] & set(self.members[rb]):
            return False
        if not reviewed and conflicts(self.trusted[ra], self.trusted[rb]):
            return False
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))
        self.forbidden[ra] |= self.forbidden.pop(rb)
        for system, values in self.trusted.pop(rb).items():
            self.trusted[ra].setdefault(system, set()).update(values)
        return True


def cluster(con: duckdb.DuckDBPyConnection) -> int:
    """TEMP id_cluster (patient_id, comp) of node numbers: links applied strongest first; one that
    would join a conflict becomes a review. Returns the number of components that needed the ordered merge.

    A component with no conflict among its members (trusted identifiers, a reviewer's no-link) merges
    whole whatever the order, so it is settled in SQL; only the rare components holding a conflict are
    read into Python and merged link by link (reviewer's, then rules, then the model by score).
    """
    _components(con)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_split AS
        WITH t AS (
            SELECT c.node, c.comp, t.system, t.vals FROM id_comp c JOIN id_trusted t ON t.patient_id = c.node
        )
        SELECT DISTINCT a.comp FROM t a
        JOIN t b ON b.comp = a.comp AND b.system = a.system AND a.node < b.node
        WHERE NOT list_has_any(a.vals, b.vals)
        UNION
        SELECT ca.comp FROM id_decisions d
        JOIN id_comp ca ON ca.node = d.l JOIN id_comp cb ON cb.node = d.r
        WHERE d.method = 'review' AND d.decision = 'no_link' AND ca.comp = cb.comp
        """
    )
    con.execute("DELETE FROM id_refused")
    con.execute("CREATE OR REPLACE TEMP TABLE id_resplit (node INTEGER, comp INTEGER)")
    split = int(con.execute("SELECT count(*) FROM id_split").fetchall()[0][0])
    if split:
        _split_conflicts(con)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE id_cluster AS
        SELECT c.node AS patient_id, coalesce(s.comp, c.comp) AS comp
        FROM id_comp c LEFT JOIN id_resplit s USING (node);
        """
    )
    return split


def _split_conflicts(con: duckdb.DuckDBPyConnection) -> None:
    """The ordered merge of the components holding a conflict, into id_resplit and id_refused."""
    nodes = [
        r[0]
        for r in con.execute(
            "SELECT node FROM id_comp WHERE comp IN (SELECT comp FROM id_split) ORDER BY node"
        ).fetchall()
    ]
    con.execute("CREATE OR REPLACE TEMP TABLE id_split_nodes AS SELECT unnest(?) AS node", [nodes])
    trusted: Trusted = {}
    for patient, system, vals in con.execute(
        "SELECT patient_id, system, vals FROM id_trusted "
        "WHERE patient_id IN (SELECT node FROM id_split_nodes)"
    ).fetchall():
        trusted.setdefault(patient, {})[system] = set(vals)
    scope = "d.l IN (SELECT node FROM id_split_nodes) AND d.r IN (SELECT node FROM id_split_nodes)"
    apart = {
        (a, b)
        for a, b in con.execute(
            f"SELECT l, r FROM id_decisions d WHERE {scope} AND method = 'review' AND decision = 'no_link'"
        ).fetchall()
    }
    links = con.execute(
        f"""
        SELECT l, r, method FROM id_decisions d WHERE {scope} AND decision = 'link'
        ORDER BY CASE method WHEN 'review' THEN 0 WHEN 'rule' THEN 1 ELSE 2 END,
            -coalesce(score, 0.0), l, r
        """
    ).fetchall()
    clusters = _Clusters(nodes, trusted, apart)
    refused = [(a, b) for a, b, method in links if not clusters.union(a, b, reviewed=method == "review")]
    label = {}
    for members in clusters.members.values():
        first = min(members)
        for m in members:
            label[m] = first
    con.register(
        "id_refused_new",
        pa.table(
            {"l": [a for a, _ in refused], "r": [b for _, b in refused]},
            schema=pa.schema([("l", pa.int32()), ("r", pa.int32())]),
        ),
    )
    con.register(
        "id_resplit_new",
        pa.table(
            {"node": list(label), "comp": list(label.values())},
            schema=pa.schema([("node", pa.int32()), ("comp", pa.int32())]),
        ),
    )
    try:
        con.execute("INSERT INTO id_refused SELECT l, r FROM id_refused_new")
        con.execute("INSERT INTO id_resplit SELECT node, comp FROM id_resplit_new")
    finally:
        con.unregister("id_refused_new")
        con.unregister("id_resplit_new")
    con.execute("DROP TABLE id_split_nodes")
