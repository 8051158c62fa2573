"""Exit codes and the one exception type the CLI turns into a clear message and exit status.

Exit codes are a public interface (scripts and CI branch on them), so they live in one table
that both `--help` and README print from.
"""

from __future__ import annotations

OK = 0
INTERNAL = 1
USAGE = 2
NO_GPU = 3
REFUSED = 4
APPLY_FAILED = 5
TESTS_FAILED = 6
BUILD_FAILED = 7
INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    OK: "success (also: already applied / already pristine)",
    INTERNAL: "internal error (a bug in sglang-sage; the tree was rolled back)",
    USAGE: "bad command line (unknown flag, missing value)",
    NO_GPU: "applied, but GPU tests not run: no CUDA GPU in the target python, or fewer GPUs than a "
    "registered test needs (the message names it)",
    REFUSED: "refused before writing anything (bad tree, version, drift, dirty, read-only, git missing, API check)",
    APPLY_FAILED: "a step failed while writing; everything was rolled back",
    TESTS_FAILED: "applied and built, but the GPU attention tests failed",
    BUILD_FAILED: "applied, but the rebuild step failed (tree stays patched)",
    INTERRUPTED: "interrupted (Ctrl-C); everything was rolled back",
}


class SageError(Exception):
    """An expected failure: carries the exit code and a message meant for a human."""

    def __init__(self, message: str, code: int = REFUSED, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = list(details or [])

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)
