from __future__ import annotations

from pathlib import Path

import pytest

from sglang_sage.errors import SageError
from sglang_sage.layout import LayoutKind, detect


def test_checkout_layout(checkout: Path) -> None:
    layout = detect(checkout)
    assert layout.kind is LayoutKind.GIT_CHECKOUT and layout.version == "0.5.17" and layout.is_git
    assert layout.map_path("python/sglang/srt/server_args.py") == checkout / "python/sglang/srt/server_args.py"
    assert layout.map_path("test/registered/x.py") == checkout / "test/registered/x.py"


def test_installed_layout(installed: Path) -> None:
    layout = detect(installed)
    assert layout.kind is LayoutKind.INSTALLED and layout.version == "0.5.17"
    assert layout.map_path("python/sglang/srt/server_args.py") == installed / "sglang/srt/server_args.py"
    assert layout.map_path("test/registered/x.py") is None and layout.pyproject is None


def test_sdist_layout(sdist_root: Path) -> None:
    layout = detect(sdist_root)
    assert layout.kind is LayoutKind.SOURCE_TREE and layout.version == "0.5.10.post1"


@pytest.mark.parametrize("make", ["missing", "file", "empty"])
def test_not_an_sglang_tree(tmp_path: Path, make: str) -> None:
    target = tmp_path / "x"
    if make == "file":
        target.write_text("x")
    elif make == "empty":
        target.mkdir()
    with pytest.raises(SageError) as err:
        detect(target)
    assert str(target) in err.value.message
