"""What the `ehrlift mappings` and `ehrlift terminology coverage` commands do, printed for an operator."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.common.errors import EhrliftError, ExitCode
from pipelines.common.warehouse import open_warehouse


class UsageError(EhrliftError):
    exit_code = ExitCode.USAGE


def suggest_command(warehouse: Path, out_file: Path, top: int, out: Console) -> int:
    from terminology.review import suggest, write_review

    if top < 1:
        raise UsageError("--top must be at least 1")
    if out_file.suffix.lower() not in (".csv", ".xlsx"):
        raise UsageError(f"--out must end in .csv or .xlsx, not {out_file.suffix or 'nothing'}")
    with open_warehouse(warehouse, read_only=True) as con:
        rows = suggest(con, warehouse, top)
    write_review(out_file, rows)
    codes = len({(r["source_system"], r["source_code"], r["source_display"]) for r in rows})
    out.print(f"{codes} unmapped local code(s), {len(rows)} review row(s) written to {out_file}")
    beside = {(r["source_system"], r["source_code"]) for r in rows if r["basis"].startswith("sent beside")}
    none = [r for r in rows if not r["target_code"]]
    if codes:
        out.print(
            f"  {len(beside)} with a standard code the sources sent beside them (near-certain), "
            f"{len(none)} without any candidate (the note column says why and what to load)",
            soft_wrap=True,
        )
    if codes:
        out.print(
            "mark rows to keep with decision=approve, fill reviewer (and review_date), then run "
            f"`ehrlift mappings import {out_file}`"
        )
    return int(ExitCode.OK)


def import_command(warehouse: Path, review_file: Path, out: Console, err: Console) -> int:
    from terminology.review import import_review

    with open_warehouse(warehouse, read_only=True) as con:
        result = import_review(con, review_file, warehouse)
    for warning in result.warnings:
        err.print(f"warning: {warning}", soft_wrap=True)
    if result.path is None:
        out.print("no approved rows: nothing imported")
    else:
        out.print(
            f"{result.approved} approved mapping(s) written as crosswalk {result.path}; "
            "the next `ehrlift run` applies them to old and new resources",
            soft_wrap=True,
        )
    return int(ExitCode.OK)


def millennium_command(warehouse: Path, extract: Path, out: Console) -> int:
    from terminology.target_codings import load_code_values

    with open_warehouse(warehouse) as con:
        n = load_code_values(con, extract)
    out.print(f"{n} Millennium code value(s) loaded from {extract.name}")
    return int(ExitCode.OK)


def coverage_command(warehouse: Path, out: Console) -> int:
    from terminology.coverage import coverage

    with open_warehouse(warehouse, read_only=True) as con:
        cov = coverage(con, warehouse)
    c = cov.codings
    out.print(
        f"{cov.resources} resources, {c.total} codings: {c.standard} standard after normalization "
        f"({c.ratio:.1%}); computed on the whole warehouse, before any filter"
    )
    for title, shares in (("per system", cov.by_system), ("per source", cov.by_source)):
        table = Table(title=title, title_justify="left")
        for col in (title.split()[1], "codings", "standard", "share", "unmapped"):
            if col in ("system", "source"):
                table.add_column(col, overflow="fold")  # URIs are the point: never cut short
            else:
                table.add_column(col, justify="right")
        for name, s in shares.items():
            table.add_row(name, str(s.total), str(s.standard), f"{s.ratio:.1%}", str(s.total - s.standard))
        out.print(table)
    if cov.unmapped_reasons:
        out.print(
            "not standard, by reason: " + ", ".join(f"{r} {n}" for r, n in cov.unmapped_reasons.items())
        )
    u = cov.units
    if u.total:
        out.print(f"units: {u.total} quantities with a unit, {u.standard} UCUM ({u.ratio:.1%})")
    return int(ExitCode.OK)
