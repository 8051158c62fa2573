"""DEP-3 patch headers (https://dep-team.pages.debian.net/deps/dep3/) inside git format-patch mails.

Every patch must say what it does, where it came from, whether it went upstream and when it
was last touched; a patch set without that is unreviewable, so missing fields are an error.

This is the one parser of patch headers: the mail part (From, Date, Subject, as `git format-patch`
writes them) and the DEP-3 fields. Field values keep their continuation lines as written (each
starting with one space, a lone ` .` for an empty line), so `unfold` gives paragraphs and indentation
back for commit messages; the `[dep3]` table of an `*.edit.toml` step has the same shape.
"""

from __future__ import annotations

import email.parser
import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass

REQUIRED = ("Description", "Origin", "Forwarded", "Last-Update")
_FIELD = re.compile(r"^([A-Z][A-Za-z-]+):\s?(.*)$")
_MAIL_HEADERS = ("From", "Date", "Subject")


@dataclass(frozen=True)
class Author:
    """A `Name <mail>` identity (the mail's From:, or --author)."""

    name: str
    email: str

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>"


@dataclass(frozen=True)
class Dep3:
    """The header of one patch: mail From/Date/Subject and the DEP-3 fields (values as written)."""

    subject: str
    fields: dict[str, str]
    author: Author | None = None
    date: str | None = None

    @property
    def description(self) -> str:
        """The Description field unfolded: first line is the summary, paragraphs kept."""
        return unfold(self.fields.get("Description", ""))


def unfold(value: str) -> str:
    """A DEP-3 field value as text: continuation lines lose their one leading space, ` .` is an empty line."""
    lines = value.split("\n")
    out = [lines[0].strip()]
    for line in lines[1:]:
        body = line[1:] if line.startswith(" ") else line
        out.append("" if body.strip() == "." else body.rstrip())
    return "\n".join(out).strip("\n")


def _mail_header(head: str) -> tuple[Author | None, str | None, str]:
    lines = head.splitlines()
    if lines and lines[0].startswith("From ") and ":" not in lines[0].split()[0]:
        lines = lines[1:]  # the mbox separator `From <sha> <date>`
    block: list[str] = []
    for line in lines:
        if not line.strip():
            break
        block.append(line)
    msg = email.parser.HeaderParser().parsestr("\n".join(block) + "\n\n")
    author = None
    if msg.get("From"):
        name, addr = email.utils.parseaddr(str(msg["From"]))
        if name and addr:
            author = Author(name, addr)
    subject = re.sub(r"\s*\n\s*", " ", str(msg.get("Subject") or "")).strip()
    subject = re.sub(r"^\[PATCH[^\]]*\]\s*", "", subject)
    return author, (str(msg["Date"]) if msg.get("Date") else None), subject


def parse(text: str) -> Dep3:
    """Parse the header part (before the first `diff --git`/`---` line) of a format-patch file."""
    head = re.split(r"^(?:---\s*$|diff --git )", text, maxsplit=1, flags=re.M)[0]
    author, date, subject = _mail_header(head)
    fields: dict[str, str] = {}
    current: str | None = None
    for line in head.splitlines():
        match = _FIELD.match(line)
        if match and match.group(1) not in _MAIL_HEADERS:
            current = match.group(1)
            fields[current] = match.group(2).strip()
        elif current and line.startswith(" "):
            fields[current] += "\n" + line.rstrip()
        else:
            current = None
    return Dep3(subject, fields, author, date)


def from_fields(fields: Mapping[str, object]) -> Dep3:
    """The DEP-3 fields of an `*.edit.toml` step's [dep3] table (no mail header)."""
    return Dep3("", {k: str(v) for k, v in fields.items()})


def missing(header: Dep3) -> list[str]:
    """Required DEP-3 fields that are absent or empty."""
    return [name for name in REQUIRED if not header.fields.get(name)]
