"""DEP-3 patch headers (https://dep-team.pages.debian.net/deps/dep3/) inside git format-patch mails.

Every patch must say what it does, where it came from, whether it went upstream and when it
was last touched; a patch set without that is unreviewable, so missing fields are an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REQUIRED = ("Description", "Origin", "Forwarded", "Last-Update")
_FIELD = re.compile(r"^([A-Z][A-Za-z-]+):\s?(.*)$")


@dataclass(frozen=True)
class Dep3:
    """The DEP-3 fields of one patch, plus the mail Subject for display."""

    subject: str
    fields: dict[str, str]

    @property
    def description(self) -> str:
        """The Description field (first line is the summary)."""
        return self.fields.get("Description", "")


def parse(text: str) -> Dep3:
    """Parse the header part (before the first `diff --git`/`---` line) of a format-patch file."""
    head = re.split(r"^(?:---\s*$|diff --git )", text, maxsplit=1, flags=re.M)[0]
    subject = ""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in head.splitlines():
        if line.startswith("Subject:"):
            subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", line[len("Subject:") :].strip())
            current = None
            continue
        match = _FIELD.match(line)
        if match and match.group(1) not in ("From", "Date", "Subject"):
            current = match.group(1)
            fields[current] = match.group(2).strip()
        elif current and line.startswith(" "):
            fields[current] += "\n" + line.strip()
        else:
            current = None
    return Dep3(subject, fields)


def missing(header: Dep3) -> list[str]:
    """Required DEP-3 fields that are absent or empty."""
    return [name for name in REQUIRED if not header.fields.get(name)]
