"""apicheck.py on a miniature SGLang tree (fast): every kind of definition it reads, every kind of miss it reports.
test_apicheck.py runs the same check against the real 0.5.17 release."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from sglang_sage import apicheck
from sglang_sage.layout import detect

CHAIN = (
    "from sglang.srt.layers.attention.base_attn_backend import AttentionBackend\n"
    + "class B0(AttentionBackend):\n    pass\n"
    + "".join(f"class B{k}(B{k - 1}):\n    pass\n" for k in range(1, 10))
)  # B9 is ten levels below AttentionBackend

TREE = {
    "sglang/__init__.py": "",
    "sglang/version.py": '__version__ = "9.9.9"\n',
    "sglang/srt/__init__.py": "",
    "sglang/srt/layers/__init__.py": "",
    "sglang/srt/layers/attention/__init__.py": "",
    "sglang/srt/layers/attention/base_attn_backend.py": """
        import abc

        class AttentionBackend(abc.ABC):
            def init_forward_metadata(self, forward_batch):
                pass
            def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
                pass
            def forward_decode(self, q, k, v, layer, forward_batch, *, save_kv_cache=True):
                pass
            def get_cuda_graph_seq_len_fill_value(self):
                return 1
        """,
    "sglang/srt/base.py": """
        import abc
        from typing import Generic, TypeVar
        import torch.nn as nn
        from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
        T = TypeVar("T")

        class Layer(nn.Module):
            scale: float = 1.0
            class Inner:
                pass
            def __init__(self, heads):
                super().__init__()
                self.tp_q_head_num = heads
                self.a, (self.b, *self.c) = 1, (2, 3)
                self.n: int = 0
                self.n += 1
                for self.it in range(2):
                    pass
                with open("x") as self.fh:
                    pass
                setattr(self, "dyn", 1)
                setattr(other, "nope", 1)
            @property
            def head_dim(self):
                return 64

        class Open:
            def __getattr__(self, name):
                return 1

        class Box(Generic[T]):
            value = None

        class FromThirdParty(SomeUnknownBase):
            pass

        class Kind(__import__("enum").Enum):
            A = 1
        """,
    "sglang/srt/batch.py": """
        from sglang.srt.base import Layer as L
        from sglang.srt import base
        if True:
            X = 1
        try:
            from sglang.srt.nothing import Y
        except ImportError:
            Y = None
        finally:
            Z = 0
        with open("f") as fh:
            W = 2
        a, (b, *c) = 1, (2, 3)
        n: int = 0
        n += 1
        import os.path
        class ForwardBatch(L):
            def __init__(self):
                self.seq_lens = None
        class Mode(enum.Enum):
            EXTEND = 1
        class Sub(base.Layer, base.Box[int]):
            extra = 1
        """,
    "sglang/srt/lazy.py": "def __getattr__(name):\n    return 1\n",
    "sglang/srt/star.py": "from os.path import *\n",
    "sglang/srt/reexport.py": "from .batch import ForwardBatch\nfrom sglang.srt.batch import ForwardBatch as FB\n",
    "sglang/srt/pkg/__init__.py": "from .mod import Thing\n",
    "sglang/srt/pkg/mod.py": "class Thing:\n    def go(self):\n        pass\n",
    "sglang/srt/triton_backend.py": """
        from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
        class TritonBackend(AttentionBackend):
            def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
                pass
        """,
    "sglang/srt/broken.py": "def (:\n",
    "sglang/srt/chain.py": CHAIN,
    "sglang/srt/re/r0.py": "from sglang.srt.re.r1 import X\n",
    "sglang/srt/re/r1.py": "from sglang.srt.re.r2 import X\n",
    "sglang/srt/re/r2.py": "from sglang.srt.re.r3 import X\n",
    "sglang/srt/re/r3.py": "from sglang.srt.re.r4 import X\n",
    "sglang/srt/re/r4.py": "from sglang.srt.re.r5 import X\n",
    "sglang/srt/re/r5.py": "from sglang.srt.re.r6 import X\n",
    "sglang/srt/re/r6.py": "from sglang.srt.re.r7 import X\n",
    "sglang/srt/re/r7.py": "from sglang.srt.re.r8 import X\n",
    "sglang/srt/re/r8.py": "from sglang.srt.re.r9 import X\n",
    "sglang/srt/re/r9.py": "from sglang.srt.re.r10 import X\n",
    "sglang/srt/re/__init__.py": "",
    "sglang/srt/re/r10.py": "class X:\n    pass\n",
    "sglang/srt/more.py": """
        from torch.nn.modules.module import Module
        from .base import Layer
        from sglang.srt.base import Open

        class Cyc1(Cyc2):
            pass

        class Cyc2(Cyc1):
            pass

        class Both(Open, Layer):
            pass

        class Dyn(Layer):
            def __getattr__(self, name):
                return 1
            def after(self):
                pass

        class Attr:
            def __getattribute__(self, name):
                return 1

        class Multi:
            x = y = 1

        class FromModule(Module):
            pass

        class AfterCall(__import__("x").Y, Layer):
            pass

        class AfterUnknown(Unknown, Layer):
            pass

        class AfterExternal(Module, Layer):
            pass

        class Local(Layer):
            pass

        class UsesLocal(Local):
            pass
        """,
    "sglang/srt/relpkg/__init__.py": "from ..base import Layer\n\nclass InPkg(Layer):\n    pass\n",
    "sglang/srt/lazy2.py": "def __getattr__(name):\n    return 1\n\ndef other():\n    pass\n",
    "sglang/srt/mixin.py": """
        from typing import Generic, TypeVar
        from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
        T = TypeVar("T")

        class Mixin:
            def mixin_hook(self, a, b):
                pass

        class GenBackend(AttentionBackend, Generic[T]):
            pass
        """,
    "sglang/srt/relbackend.py": (
        "from .triton_backend import TritonBackend\n\nclass RelBackend(TritonBackend):\n    pass\n"
    ),
    "sglang/srt/relbpkg/__init__.py": (
        "from ..triton_backend import TritonBackend\n\n\nclass PkgBackend(TritonBackend):\n    pass\n"
    ),
    "torchy/__init__.py": "class T:\n    def only(self):\n        pass\n",
    "sglang/srt/cycle_a.py": "from sglang.srt.cycle_b import C\n",
    "sglang/srt/cycle_b.py": "from sglang.srt.cycle_a import C\n",
}


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    write(root, TREE)
    write(root, {"sglang-9.9.9.dist-info/METADATA": "Name: sglang\nVersion: 9.9.9\n"})
    return root


@pytest.fixture
def src(site: Path, tmp_path: Path) -> apicheck.Sources:
    write(tmp_path / "overlay", {"sglang/srt/ours.py": "class Ours:\n    pass\n"})
    return apicheck.Sources(detect(site), tmp_path / "overlay")


def check(site: Path, tmp_path: Path, files: dict[str, str]) -> list[str]:
    overlay = tmp_path / "overlay"
    write(overlay, files)
    return [str(m) for m in apicheck.check(overlay, detect(site))]


# ----------------------------------------------------------------------------- Sources


def test_module_file_overlay_first_and_packages(src: apicheck.Sources, site: Path, tmp_path: Path) -> None:
    assert src.module_file("sglang.srt.base") == site / "sglang/srt/base.py"
    assert src.module_file("sglang.srt.pkg") == site / "sglang/srt/pkg/__init__.py"
    assert src.module_file("sglang.srt.ours") == tmp_path / "overlay/sglang/srt/ours.py"
    assert src.module_file("sglang.srt.nope") is None
    assert src.is_overlay("sglang.srt.ours") and not src.is_overlay("sglang.srt.base")
    assert not src.is_overlay("sglang.srt.nope")
    assert src.tree("sglang.srt.nope") is None and isinstance(src.tree("sglang.srt.base"), ast.Module)
    assert src.tree("sglang.srt.broken") is None  # does not parse
    write(tmp_path / "overlay", {"sglang/srt/base.py": "class Replaced:\n    pass\n"})
    assert src.module_file("sglang.srt.base") == tmp_path / "overlay/sglang/srt/base.py"


def test_top_names(src: apicheck.Sources) -> None:
    names, is_open = src.top_names("sglang.srt.batch")
    assert {"L", "base", "X", "Y", "Z", "W", "a", "b", "c", "n", "os", "ForwardBatch", "Mode", "Sub"} <= names
    assert not is_open
    assert src.top_names("sglang.srt.lazy") == ({"__getattr__"}, True)
    assert src.top_names("sglang.srt.star")[1] is True
    assert src.top_names("sglang.srt.nope") == (set(), False)


def test_resolve_follows_reexports(src: apicheck.Sources) -> None:
    assert src.resolve("sglang.srt.batch", "ForwardBatch") == "sglang.srt.batch.ForwardBatch"
    assert src.resolve("sglang.srt.reexport", "ForwardBatch") == "sglang.srt.batch.ForwardBatch"
    assert src.resolve("sglang.srt.reexport", "FB") == "sglang.srt.batch.ForwardBatch"
    assert src.resolve("sglang.srt.pkg", "Thing") == "sglang.srt.pkg.mod.Thing"  # relative import in a package
    assert src.resolve("sglang.srt.batch", "L") == "sglang.srt.base.Layer"
    assert src.resolve("sglang.srt.batch", "nothing") is None
    assert src.resolve("sglang.srt.cycle_a", "C") is None  # re-export cycle: gives up
    assert src.resolve("sglang.srt.nope", "X") is None
    assert src.resolve("sglang.srt.batch", "os") is None  # a plain `import os.path`: not a class


def test_class_info_names(src: apicheck.Sources) -> None:
    info = src.class_info("sglang.srt.base.Layer")
    assert info is not None and not info.open and info.qualname == "sglang.srt.base.Layer"
    own = {"scale", "Inner", "__init__", "tp_q_head_num", "a", "b", "c", "n", "it", "fh", "dyn", "head_dim"}
    assert own <= info.names
    assert "nope" not in info.names  # setattr on another object
    assert {"forward", "parameters", "to", "eval"} <= info.names  # torch.nn.Module through `nn.Module`
    assert set(info.methods) == {"__init__", "head_dim"}


def test_class_info_bases_and_openness(src: apicheck.Sources) -> None:
    fb = src.class_info("sglang.srt.batch.ForwardBatch")
    assert fb is not None and not fb.open
    assert {"seq_lens", "tp_q_head_num", "head_dim", "forward"} <= fb.names  # own + inherited via alias L
    assert fb.methods["head_dim"] is src.class_info("sglang.srt.base.Layer").methods["head_dim"]  # type: ignore[union-attr]
    assert fb.methods["__init__"].lineno == 19  # its own __init__ wins over the base's
    sub = src.class_info("sglang.srt.batch.Sub")
    assert sub is not None and {"extra", "tp_q_head_num", "value"} <= sub.names and not sub.open
    assert src.class_info("sglang.srt.base.Open").open  # type: ignore[union-attr]
    assert src.class_info("sglang.srt.base.FromThirdParty").open  # type: ignore[union-attr]
    assert src.class_info("sglang.srt.base.Kind").open  # type: ignore[union-attr]  # base is a call
    mode = src.class_info("sglang.srt.batch.Mode")  # enum.Enum: a known external base
    assert mode is not None and not mode.open and mode.names == {"EXTEND", "name", "value"}
    backend = src.class_info("sglang.srt.triton_backend.TritonBackend")
    assert backend is not None and not backend.open  # abc.ABC is a known external base
    assert backend.methods["forward_extend"].lineno == 4 and "forward_decode" in backend.methods
    assert src.class_info("sglang.srt.base.Missing") is None
    assert src.class_info("sglang.srt.nope.X") is None
    assert src.class_info("sglang.srt.base.Layer") is src.class_info("sglang.srt.base.Layer")  # cached


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("module", "level", "current", "is_package", "want"),
    [
        ("a.b", 0, "sglang.x.y", False, "a.b"),
        (None, 0, "sglang.x.y", False, ""),
        ("m", 1, "sglang.x.y", False, "sglang.x.m"),
        ("m", 1, "sglang.x", True, "sglang.x.m"),
        (None, 1, "sglang.x.y", False, "sglang.x"),
        ("m", 2, "sglang.x.y", False, "sglang.m"),
        ("m", 2, "sglang.x", True, "sglang.m"),
        ("m", 3, "sglang.x.y.z", False, "sglang.m"),
    ],
)
def test_absolute(module: str | None, level: int, current: str, is_package: bool, want: str) -> None:
    assert apicheck._absolute(module, level, current, is_package) == want


def test_imports_of() -> None:
    tree = ast.parse(
        "import a.b\nimport c.d as e\nimport a\nfrom .m import X as Y, Z\nfrom q import *\n"
        "def f():\n    from deep import inner\n"
    )
    assert apicheck.imports_of(tree, "sglang.pkg.mod", False) == {
        "a": "a",
        "e": "c.d",
        "Y": "sglang.pkg.m.X",
        "Z": "sglang.pkg.m.Z",
        "inner": "deep.inner",
    }


def test_qualify() -> None:
    tree = ast.parse("class Local:\n    pass\n")
    imports = {"fb": "sglang.batch", "FB": "sglang.batch.ForwardBatch"}
    assert apicheck._qualify("fb.ForwardBatch", imports, "m", tree) == "sglang.batch.ForwardBatch"
    assert apicheck._qualify("FB", imports, "m", tree) == "sglang.batch.ForwardBatch"
    assert apicheck._qualify("Local", imports, "sglang.m", tree) == "sglang.m.Local"
    assert apicheck._qualify("Local.Inner", imports, "sglang.m", tree) == "sglang.m.Local.Inner"
    assert apicheck._qualify("Other", imports, "sglang.m", tree) == "Other"


@pytest.mark.parametrize(
    ("annotation", "names"),
    [
        ("X", ["X"]),
        ("mod.X", ["mod.X"]),
        ("'X'", ["X"]),
        ("'Optional[X]'", ["X"]),
        ("'not valid ('", []),
        ("Optional[X]", ["X"]),
        ("typing.Optional[X]", ["X"]),
        ("Union[X, Y, None]", ["X", "Y"]),
        ("Annotated[X, Y]", ["X"]),
        ("List[X]", []),
        ("X | None", ["X"]),
        ("X | 'Y' | None", ["X", "Y"]),
        ("None", []),
        ("1", []),
        ("f()", []),
    ],
)
def test_annotation_names(annotation: str, names: list[str]) -> None:
    assert apicheck._annotation_names(ast.parse(annotation, mode="eval").body) == names


def test_annotation_names_of_nothing() -> None:
    assert apicheck._annotation_names(None) == []


def sig(src: str) -> ast.FunctionDef:
    fn = ast.parse(textwrap.dedent(src)).body[0]
    assert isinstance(fn, ast.FunctionDef)
    return fn


BASE = "def f(self, a, b, c=1, *, k, kd=2, **kw): pass"


@pytest.mark.parametrize(
    ("override", "problems"),
    [
        ("def f(self, a, b, c=1, *, k, kd=2, **kw): pass", []),
        ("def f(self, a, b, c=1, d=3, *, k, kd=2, **kw): pass", []),  # an extra optional parameter is fine
        ("def f(self, a, b, *args, k, **kw): pass", []),  # *args takes c
        ("def f(self, a, b, *, c=1, k, **kw): pass", []),  # c as keyword-only still accepts c=...
        ("def f(self, a, x, c=1, *, k, kd=2, **kw): pass", ["parameter 2 is 'x', base has 'b'"]),
        ("def f(self, a, *, k, kd=2, **kw): pass", ["missing parameter 'b'", "missing parameter 'c'"]),
        ("def f(self, a, b, c=1, **kw): pass", []),  # **kw takes k and kd
        ("def f(self, a, b, c=1, *, kd=2): pass", ["missing keyword parameter 'k'", "base accepts **kw (callers pass "
                                                    "extra keywords); the override must too"]),
        ("def f(self, a, b, c, d, *, k, kd=2, **kw): pass", ["extra required parameter 'd'"]),
        ("def f(self, a, b, c=1, *, k, kd=2, new, **kw): pass", ["extra required keyword parameter 'new'"]),
        ("def f(self, a, b, c=1, *, k, kd=2, b2=0, **kw): pass", []),
        ("def f(self, a, b, c=1, *, k, kd, **kw): pass", []),  # kd required here: callers always pass it by name
    ],
)  # fmt: skip
def test_sig_problems(override: str, problems: list[str]) -> None:
    assert apicheck._sig_problems(sig(BASE), sig(override)) == problems


def test_sig_problems_positional_only_base() -> None:
    base = sig("def f(self, a, /, b): pass")
    assert apicheck._sig_problems(base, sig("def f(self, a, b): pass")) == []
    assert apicheck._sig_problems(base, sig("def f(self, b, a): pass")) == [
        "parameter 1 is 'b', base has 'a'",
        "parameter 2 is 'a', base has 'b'",
    ]
    assert apicheck._sig_problems(sig("def f(self, a): pass"), sig("def f(self, /, a, b): pass")) == [
        "extra required parameter 'b'"
    ]


def test_module_name(tmp_path: Path) -> None:
    root = tmp_path / "overlay" / "sglang"
    assert apicheck._module_name(root / "srt" / "x.py", root.parent) == ("sglang.srt.x", False)
    assert apicheck._module_name(root / "srt" / "__init__.py", root.parent) == ("sglang.srt", True)


def test_is_property() -> None:
    decos = ast.parse("@property\n@x.setter\n@functools.cached_property\n@staticmethod\ndef f(): pass").body[0]
    assert [apicheck._is_property(d) for d in decos.decorator_list] == [True, True, True, False]  # type: ignore[attr-defined]


def test_toplevel_and_bound() -> None:
    tree = ast.parse("if a:\n    x = 1\nelse:\n    y = 2\ndef f():\n    z = 3\n")
    assert [type(n).__name__ for n in apicheck._toplevel(tree.body)] == ["If", "Assign", "Assign", "FunctionDef"]
    target = ast.parse("a, [b, *c], d.e = v").body[0].targets[0]  # type: ignore[attr-defined]
    assert apicheck._bound(target) == {"a", "b", "c"}
    assert apicheck._bound(ast.parse("() = v").body[0].targets[0]) == set()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- check() end to end


def test_clean_overlay(site: Path, tmp_path: Path) -> None:
    files = {
        "sglang/srt/ours.py": """
            from __future__ import annotations
            import os
            import sglang.srt.base
            from sglang.srt import pkg, batch
            from sglang.srt.pkg import mod
            from sglang.srt.lazy import anything
            from sglang.srt.star import whatever
            from sglang.srt.batch import *
            from sglang.srt.base import AttentionBackend, Layer
            from sglang.srt.batch import ForwardBatch
            from .helper import H
            from typing import Optional

            class OursBackend(AttentionBackend):
                def init_forward_metadata(self, forward_batch: ForwardBatch):
                    self.x = forward_batch.seq_lens, forward_batch.tp_q_head_num, forward_batch.__class__
                    forward_batch.new_attr = 1

                def forward_extend(self, q, k, v, layer: Optional[Layer], forward_batch, save_kv_cache=True, **kw):
                    return layer.head_dim, layer.scale, layer.Inner, layer.forward

                @property
                def forward_decode(self):
                    return None

                def _private_helper(self, h: H, o: os.PathLike):
                    return h.anything, o.anything
            """,
        "sglang/srt/helper.py": "class H:\n    pass\n",
        "sglang/srt/__pycache__/junk.py": "this is not checked (\n",
        "test/registered/test_ours.py": "from sglang.srt.ours import OursBackend\n",
    }
    assert check(site, tmp_path, files) == []


def test_every_kind_of_miss(site: Path, tmp_path: Path) -> None:
    files = {
        "sglang/srt/ours.py": """
            from sglang.srt.base import NoSuchName
            from sglang.srt.no_such_module import X
            from .no_such_neighbour import Y
            import sglang.srt.no_such_pkg
            import sglang.srt.base
            from sglang.srt.triton_backend import TritonBackend
            from sglang.srt.batch import ForwardBatch as FB
            from sglang.srt import base as b

            class OursBackend(TritonBackend):
                def init_forward_metadata(self, forward_batch: "FB"):
                    return forward_batch.seq_lenz

                def forward_extend(self, q, k, v, lyr, forward_batch, save_kv_cache=True, **kwargs):
                    pass

                def forward_decode(self, q, k, v, layer, forward_batch):
                    pass

                def public_extra(self):
                    pass

            class NotABackend(b.Layer):
                def public_is_fine_here(self):
                    pass

            def free_function(layer: b.Layer, other: b.Open, third: b.FromThirdParty):
                return layer.no_head, other.anything, third.anything
            """,
        "test/registered/test_ours.py": "from sglang.srt.ours import Missing\n",
    }
    why = "(not set as self.{0}, not a class attribute/field/method/property, not inherited)"
    assert check(site, tmp_path, files) == [
        "overlay/sglang/srt/ours.py:2: sglang.srt.base.NoSuchName: not defined at top level of the module",
        "overlay/sglang/srt/ours.py:3: sglang.srt.no_such_module: module does not exist",
        "overlay/sglang/srt/ours.py:4: sglang.srt.no_such_neighbour: module does not exist",
        "overlay/sglang/srt/ours.py:5: sglang.srt.no_such_pkg: module does not exist",
        "overlay/sglang/srt/ours.py:29: layer.no_head: Layer (sglang.srt.base.Layer) has no attribute 'no_head' "
        + why.format("no_head"),
        "overlay/sglang/srt/ours.py:13: forward_batch.seq_lenz: ForwardBatch (sglang.srt.batch.ForwardBatch) has no "
        "attribute 'seq_lenz' " + why.format("seq_lenz"),
        "overlay/sglang/srt/ours.py:15: OursBackend.forward_extend: signature differs from the base: parameter 4 is "
        "'lyr', base has 'layer'",
        "overlay/sglang/srt/ours.py:18: OursBackend.forward_decode: signature differs from the base: missing keyword "
        "parameter 'save_kv_cache'",
        "overlay/sglang/srt/ours.py:21: OursBackend.public_extra: public method not defined on the target "
        "AttentionBackend (SGLang never calls it; make it _private or use the base's hook)",
        "overlay/test/registered/test_ours.py:1: sglang.srt.ours.Missing: not defined at top level of the module",
    ]


def test_unparsable_overlay_file(site: Path, tmp_path: Path) -> None:
    assert check(site, tmp_path, {"sglang/srt/bad.py": "def (:\n"}) == [
        "overlay/sglang/srt/bad.py:1: <file>: does not parse as Python"
    ]


def test_overlay_outside_the_display_root(site: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    write(overlay, {"sglang/srt/x.py": "from sglang.srt.nope import A\n"})
    src = apicheck.Sources(detect(site), overlay)
    path = overlay / "sglang/srt/x.py"
    misses = apicheck.check_file(path, overlay, src, tmp_path / "elsewhere")
    assert [str(m) for m in misses] == [f"{path}:1: sglang.srt.nope: module does not exist"]
    assert misses[0] == apicheck.Miss(str(path), 1, "sglang.srt.nope", "module does not exist")


# ----------------------------------------------------------------------------- depth limits, bases, openness


def test_resolve_follows_up_to_eight_reexports(src: apicheck.Sources) -> None:
    assert src.resolve("sglang.srt.re.r2", "X") == "sglang.srt.re.r10.X"  # 8 re-exports
    assert src.resolve("sglang.srt.re.r1", "X") is None  # 9: gives up


def test_backend_found_through_at_most_eight_levels_of_bases(site: Path, tmp_path: Path) -> None:
    bad = "    def public_extra(self):\n        pass\n"
    files = {f"sglang/srt/o{k}.py": f"from sglang.srt.chain import B{k}\n\nclass O{k}(B{k}):\n{bad}" for k in (7, 8)}
    assert check(site, tmp_path, files) == [
        "overlay/sglang/srt/o7.py:4: O7.public_extra: public method not defined on the target AttentionBackend "
        "(SGLang never calls it; make it _private or use the base's hook)"
    ]  # O8 is 9 levels below AttentionBackend: not followed


def test_class_info_bases(src: apicheck.Sources) -> None:
    layer = src.class_info("sglang.srt.base.Layer")
    assert layer is not None
    both = src.class_info("sglang.srt.more.Both")  # an open base stays open after a closed one
    assert both is not None and both.open and "tp_q_head_num" in both.names
    dyn = src.class_info("sglang.srt.more.Dyn")  # __getattr__ before other methods
    assert dyn is not None and dyn.open
    assert src.class_info("sglang.srt.more.Attr").open  # type: ignore[union-attr]
    assert {"x", "y"} <= src.class_info("sglang.srt.more.Multi").names  # type: ignore[union-attr]
    from_module = src.class_info("sglang.srt.more.FromModule")  # torch.nn.modules.module.Module
    assert from_module is not None and not from_module.open and "forward" in from_module.names
    for name in ("AfterCall", "AfterUnknown", "AfterExternal"):  # bases after an odd one are still read
        info = src.class_info(f"sglang.srt.more.{name}")
        assert info is not None and "tp_q_head_num" in info.names, name
    assert not src.class_info("sglang.srt.more.AfterExternal").open  # type: ignore[union-attr]
    uses = src.class_info("sglang.srt.more.UsesLocal")  # a base defined in the same module
    assert uses is not None and not uses.open and "tp_q_head_num" in uses.names
    inpkg = src.class_info("sglang.srt.relpkg.InPkg")  # base from `..base` inside a package __init__
    assert inpkg is not None and not inpkg.open and "tp_q_head_num" in inpkg.names
    cyc = src.class_info("sglang.srt.more.Cyc1")  # a cycle of bases: open, not a crash
    assert cyc is not None and cyc.open


def test_top_names_open_module_with_more_functions(src: apicheck.Sources) -> None:
    assert src.top_names("sglang.srt.lazy2") == ({"__getattr__", "other"}, True)


def test_parse_sees_a_changed_file(tmp_path: Path) -> None:
    import os

    f = tmp_path / "m.py"
    f.write_text("A = 1\n")
    os.utime(f, (1_000_000, 1_000_000))
    assert [n.targets[0].id for n in apicheck._parse(f).body] == ["A"]  # type: ignore[attr-defined, union-attr]
    f.write_text("B = 1\n")
    os.utime(f, (2_000_000, 2_000_000))
    assert [n.targets[0].id for n in apicheck._parse(f).body] == ["B"]  # type: ignore[attr-defined, union-attr]


def test_is_property_of_a_call() -> None:
    deco = ast.parse("@f().setter\ndef g(): pass").body[0].decorator_list[0]  # type: ignore[attr-defined]
    assert apicheck._is_property(deco) is False


def test_backend_rules_in_every_shape(site: Path, tmp_path: Path) -> None:
    files = {
        "sglang/srt/shapes.py": """
            from __future__ import annotations
            import os
            from sglang.srt.base import Layer, Missing2
            from sglang.srt.base import AttentionBackend
            from sglang.srt.mixin import Mixin, GenBackend
            from sglang.srt.relbackend import RelBackend
            from sglang.srt.batch import ForwardBatch
            from sglang.srt import batch
            import torchy

            class NotABackend:
                def public(self):
                    pass

            class _LocalBase(AttentionBackend):
                pass

            class ViaLocal(_LocalBase):
                def not_on_base(self):
                    pass

            class ViaGeneric(GenBackend[int]):
                def not_on_base_either(self):
                    pass

            class ViaRelative(RelBackend):
                def neither(self):
                    pass

            class WithMixin(Unknown, object, Mixin, AttentionBackend):
                def _private_first(self):
                    pass

                @property
                def forward_decode(self):
                    return None

                def public_unknown(self):
                    pass

                def mixin_hook(self, a, c):
                    pass

                def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True):
                    pass

            def annotated(n: int, t: torchy.T, fb: int | ForwardBatch, own: NotABackend | ForwardBatch,
                          lay: Layer | ForwardBatch, gone: batch.NoSuchClass):
                return t.whatever, fb.bad1, own.bad2, lay.bad3, gone.anything
            """,
        "sglang/srt/pkgo/__init__.py": (
            "from ..batch import ForwardBatch, Nope\n\ndef f(fb: ForwardBatch):\n    return fb.bad4\n"
        ),
        "sglang/srt/__pycache__/stale.py": "import sglang.srt.gone\n",
    }
    got = check(site, tmp_path, files)
    base_miss = (
        "public method not defined on the target AttentionBackend (SGLang never calls it; make it _private or use "
        "the base's hook)"
    )
    no_attr = "(not set as self.{0}, not a class attribute/field/method/property, not inherited)"
    fb = "ForwardBatch (sglang.srt.batch.ForwardBatch) has no attribute '{0}' "
    assert got == [
        "overlay/sglang/srt/pkgo/__init__.py:1: sglang.srt.batch.Nope: not defined at top level of the module",
        "overlay/sglang/srt/pkgo/__init__.py:4: fb.bad4: " + fb.format("bad4") + no_attr.format("bad4"),
        "overlay/sglang/srt/shapes.py:4: sglang.srt.base.Missing2: not defined at top level of the module",
        "overlay/sglang/srt/shapes.py:50: fb.bad1: " + fb.format("bad1") + no_attr.format("bad1"),
        "overlay/sglang/srt/shapes.py:50: own.bad2: " + fb.format("bad2") + no_attr.format("bad2"),
        "overlay/sglang/srt/shapes.py:50: lay.bad3: Layer (sglang.srt.base.Layer) has no attribute 'bad3' "
        + no_attr.format("bad3"),
        "overlay/sglang/srt/shapes.py:50: lay.bad3: " + fb.format("bad3") + no_attr.format("bad3"),
        f"overlay/sglang/srt/shapes.py:20: ViaLocal.not_on_base: {base_miss}",
        f"overlay/sglang/srt/shapes.py:24: ViaGeneric.not_on_base_either: {base_miss}",
        f"overlay/sglang/srt/shapes.py:28: ViaRelative.neither: {base_miss}",
        f"overlay/sglang/srt/shapes.py:39: WithMixin.public_unknown: {base_miss}",
        "overlay/sglang/srt/shapes.py:42: WithMixin.mixin_hook: signature differs from the base: parameter 2 is 'c', "
        "base has 'b'",
        "overlay/sglang/srt/shapes.py:45: WithMixin.forward_extend: signature differs from the base: base accepts "
        "**kwargs (callers pass extra keywords); the override must too",
    ]


def test_include_tests_false_checks_the_package_only(site: Path, tmp_path: Path) -> None:
    """The SGLang plugin loads sglang/** alone: test files are not checked then."""
    overlay = tmp_path / "overlay"
    write(
        overlay, {"sglang/srt/a.py": "from sglang.srt.nope import A\n", "test/t.py": "from sglang.srt.nope import B\n"}
    )
    layout = detect(site)
    assert [m.file for m in apicheck.check(overlay, layout, include_tests=False)] == ["overlay/sglang/srt/a.py"]
    assert [m.file for m in apicheck.check(overlay, layout)] == ["overlay/sglang/srt/a.py", "overlay/test/t.py"]


def test_open_class_first_in_a_union_and_a_backend_from_a_package(site: Path, tmp_path: Path) -> None:
    files = {
        "sglang/srt/u.py": """
            from sglang.srt.base import Open
            from sglang.srt.batch import ForwardBatch
            from sglang.srt.relbpkg import PkgBackend

            def f(x: Open | ForwardBatch):
                return x.nope

            class Ours(PkgBackend):
                def public_extra(self):
                    pass
            """,
    }
    got = check(site, tmp_path, files)
    assert got == [
        "overlay/sglang/srt/u.py:7: x.nope: ForwardBatch (sglang.srt.batch.ForwardBatch) has no attribute 'nope' "
        "(not set as self.nope, not a class attribute/field/method/property, not inherited)",
        "overlay/sglang/srt/u.py:10: Ours.public_extra: public method not defined on the target AttentionBackend "
        "(SGLang never calls it; make it _private or use the base's hook)",
    ]
