"""One decision per candidate pair (reviewer, rule, then model and guards) and the persons they make."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.identity.config import IdentityConfig
from pipelines.identity.model import ScoredPairs
from pipelines.identity.rules import Pair, conflicts

Trusted = dict[str, dict[str, set[str]]]


@dataclass(slots=True)
class PairDecision:
    left: str
    right: str
    method: str  # rule, model or review
    rule: str | None
    score: float | None
    decision: str  # link, no_link or review
    reviewer: str | None = None


def classify(score: float, thresholds: dict) -> str:
    """The model's outcome for a match probability: link, review (between thresholds) or no_link."""
    if score >= float(thresholds["link"]):
        return "link"
    if score >= float(thresholds["review"]):
        return "review"
    return "no_link"


def decide_pairs(
    cfg: IdentityConfig,
    rules: dict[Pair, tuple[str, str]],
    scored: ScoredPairs | None,
    reviewed: dict[Pair, tuple[str, str]],
    trusted: Trusted,
) -> list[PairDecision]:
    """A reviewer's decision wins; then a rule; then the model, capped by guards and known conflicts."""
    model = {(a, b): (p, g) for a, b, p, g in scored.pairs} if scored else {}
    out: list[PairDecision] = []
    for key in sorted(rules.keys() | model.keys() | reviewed.keys()):
        a, b = key
        score, guard = model.get(key, (None, None))
        if key in reviewed:
            decision, reviewer = reviewed[key]
            out.append(PairDecision(a, b, "review", "reviewer_decision", score, decision, reviewer))
            continue
        conflict = conflicts(trusted.get(a, {}), trusted.get(b, {}))
        if key in rules:
            rule, outcome = rules[key]
            if conflict and outcome == "link":
                outcome, rule = "review", f"{rule}+known_conflict"
            out.append(PairDecision(a, b, "rule", rule, score, outcome))
            continue
        assert score is not None
        outcome, rule = classify(score, cfg.thresholds), None
        if guard is not None and outcome != "no_link":
            outcome = next(g["outcome"] for g in cfg.guards if g["name"] == guard)
            rule = guard
        if conflict and outcome == "link":
            outcome, rule = "review", "known_conflict"
        out.append(PairDecision(a, b, "model", rule, score, outcome))
    return out


class _Clusters:
    """Union-find that refuses a merge across a trusted-identifier conflict or a reviewer's no-link."""

    def __init__(self, ids: list[str], trusted: Trusted, apart: set[Pair]) -> None:
        self.parent = {i: i for i in ids}
        self.members = {i: [i] for i in ids}
        self.trusted = {i: {s: set(v) for s, v in trusted.get(i, {}).items()} for i in ids}
        self.apart: dict[str, set[str]] = {}
        for a, b in apart:
            self.apart.setdefault(a, set()).add(b)
            self.apart.setdefault(b, set()).add(a)
        self.forbidden = {i: set(self.apart.get(i, ())) for i in ids}

    def find(self, i: str) -> str:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: str, b: str, reviewed: bool = False) -> bool:
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


def cluster(ids: list[str], decisions: list[PairDecision], trusted: Trusted) -> dict[str, list[str]]:
    """{root: members}: links applied strongest first; one that would join a conflict becomes a review."""
    apart = {(d.left, d.right) for d in decisions if d.method == "review" and d.decision == "no_link"}
    clusters = _Clusters(ids, trusted, apart)
    strength = {"review": 0, "rule": 1, "model": 2}
    links = [
        d
        for d in decisions
        if d.decision == "link" and d.left in clusters.parent and d.right in clusters.parent
    ]
    links.sort(key=lambda d: (strength[d.method], -(d.score or 0.0), d.left, d.right))
    for d in links:
        if not clusters.union(d.left, d.right, reviewed=d.method == "review"):
            d.decision, d.rule = "review", f"{d.rule or d.method}+cluster_conflict"
    return {root: sorted(m) for root, m in clusters.members.items()}
