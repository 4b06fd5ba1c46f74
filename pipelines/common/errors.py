"""Run-stopping errors with stable, documented exit statuses (a bad unit is quarantined, never raised)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses; the README documents each one. Never renumber: scripts depend on them."""

    OK = 0
    USAGE = 2  # the command line is wrong (argparse uses 2 too)
    INPUT_NOT_FOUND = 3  # a source path does not exist or cannot be read
    WAREHOUSE = 4  # the warehouse cannot be opened, is locked, or is newer than this ehrlift
    CONFIG = 5  # a setting or data file of the project is invalid
    TERMINOLOGY = 6  # required terminology content is missing
    GATE_BLOCKED = 7  # a critical data-quality expectation failed: back-load is blocked
    TESTS_FAILED = 8  # `ehrlift views test` ran and some cases failed
    REMOTE = 9  # a FHIR server or token endpoint refused, failed or could not be reached
    BACKLOAD_CAPABILITY = 11  # the target's CapabilityStatement lacks a type/interaction the plan needs
    INTERRUPTED = 130  # stopped by the operator (Ctrl-C); a re-run resumes cleanly
    INTERNAL = 70  # a bug in ehrlift: please report it with the run id


# What each status means and what the operator does next; the docs' exit-status page is generated from this.
EXIT_STATUS_DOCS: dict[ExitCode, tuple[str, str]] = {
    ExitCode.OK: (
        "success (quarantined units do not fail a run; they are in `ops.quarantine`)",
        "review the quarantine",
    ),
    ExitCode.USAGE: (
        "the command line is wrong, or `ehrlift sql` refused a statement (its syntax, an unknown name, "
        "or a write on the read-only warehouse)",
        "see `ehrlift --help`; fix the statement",
    ),
    ExitCode.INPUT_NOT_FOUND: (
        "a source path does not exist or cannot be read",
        "fix the path; nothing was landed",
    ),
    ExitCode.WAREHOUSE: (
        "the warehouse cannot be opened, is locked by another process (another `ehrlift run` holds it "
        "for its whole run), or is newer than this ehrlift",
        "wait for or close the other process, or upgrade",
    ),
    ExitCode.CONFIG: (
        "an invalid setting or project data file (for example a `--source-system` name)",
        "fix the setting",
    ),
    ExitCode.TERMINOLOGY: (
        "required terminology content is missing, or a release file could not be loaded (file and line "
        "named; nothing was loaded)",
        "load it (`ehrlift terminology load`), or fix or re-download the release",
    ),
    ExitCode.GATE_BLOCKED: (
        "a critical data-quality expectation failed: back-load is blocked",
        "read the compliance report's validation section",
    ),
    ExitCode.TESTS_FAILED: ("`ehrlift views test` ran and some cases failed", "see the FAIL lines"),
    ExitCode.REMOTE: (
        "a FHIR server or its token endpoint refused, failed or could not be reached (`ehrlift export`, "
        "`ehrlift backload send`); an HL7 interface did not accept some messages (`ehrlift backload hl7`)",
        "read the message (HTTP status and OperationOutcome codes); re-run to resume",
    ),
    ExitCode.BACKLOAD_CAPABILITY: (
        "`ehrlift backload send`: the target's CapabilityStatement does not declare a type/interaction the "
        "plan needs; nothing was written",
        "read the table printed above the message; use a profile that fits the server",
    ),
    ExitCode.INTERNAL: ("a bug in ehrlift", "report it with the run id from `ops.runs`"),
    ExitCode.INTERRUPTED: (
        "interrupted (Ctrl-C); the run is recorded `interrupted`",
        "run the same command again: it resumes without duplicates",
    ),
}


class EhrliftError(Exception):
    """A whole-run error: one clear line for the operator, and the exit status to leave with."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputNotFoundError(EhrliftError):
    exit_code = ExitCode.INPUT_NOT_FOUND


class WarehouseError(EhrliftError):
    exit_code = ExitCode.WAREHOUSE


class ConfigError(EhrliftError):
    exit_code = ExitCode.CONFIG
