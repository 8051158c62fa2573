"""Static check, from source with `ast`, that every SGLang internal the overlay uses exists in the target.

SGLang renames internals between releases (the seed backend read `layer.tp_kv_head_num`; 0.5.17 only
has `tp_k_head_num`/`tp_v_head_num`). Such a miss only shows up on a GPU, deep inside a forward
pass; this check finds it on any machine before a single file is written. Checked:

* `from sglang.x import Z` / `import sglang.x` (also relative imports inside the overlay): the module
  exists (in the tree or in the overlay) and defines Z at top level (def/class/assign/import) or has
  a submodule Z;
* `p.attr` where parameter `p` is annotated with an SGLang class (RadixAttention, ForwardBatch,
  ModelRunner, ...; resolved by following the overlay's import of that name): attr is set as
  `self.attr` in the class or its bases, or is a class attribute / dataclass field / method / property;
* public methods of AttentionBackend subclasses exist on the target base with compatible parameters.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sglang_sage.layout import Layout

BACKEND_BASE = "sglang.srt.layers.attention.base_attn_backend.AttentionBackend"

# Public API of external bases that SGLang classes derive from (the check reads SGLang source only).
_EXTERNAL_BASES: dict[str, frozenset[str]] = {
    "torch.nn.Module": frozenset(
        "training forward __call__ parameters named_parameters buffers named_buffers children "
        "named_children modules named_modules state_dict load_state_dict register_buffer "
        "register_parameter register_module add_module to cuda cpu half float bfloat16 eval train "
        "requires_grad_ zero_grad apply get_submodule get_parameter get_buffer extra_repr type".split()
    ),
    "abc.ABC": frozenset(),
    "object": frozenset(),
    "enum.Enum": frozenset({"name", "value"}),
    "enum.IntEnum": frozenset({"name", "value"}),
    "typing.Generic": frozenset(),
}
_ALIASES = {"nn.Module": "torch.nn.Module", "torch.nn.modules.module.Module": "torch.nn.Module"}


@dataclass(frozen=True)
class Miss:
    """One SGLang internal the overlay uses that the target lacks."""

    file: str
    line: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}: {self.reason}"


@dataclass
class ClassInfo:
    """What a class offers: names and methods (with their signatures), and whether that is all."""

    qualname: str
    names: set[str]
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef]
    open: bool  # an unknown external base or __getattr__: cannot prove a name is missing


class Sources:
    """Module lookup over the target tree with the overlay laid on top (as it will be after apply)."""

    def __init__(self, layout: Layout, overlay_root: Path) -> None:
        self.pkg_root = layout.pkg_root
        self.overlay_pkg = overlay_root  # overlay/sglang/... mirrors the package root
        self._class_cache: dict[str, ClassInfo | None] = {}

    def module_file(self, module: str) -> Path | None:
        """The .py file of a dotted module name, overlay first."""
        rel = Path(*module.split("."))
        for base in (self.overlay_pkg, self.pkg_root):
            for candidate in (base / rel.with_suffix(".py"), base / rel / "__init__.py"):
                if candidate.is_file():
                    return candidate
        return None

    def tree(self, module: str) -> ast.Module | None:
        """Parsed module (cached)."""
        path = self.module_file(module)
        return _parse(path) if path else None

    def is_overlay(self, module: str) -> bool:
        """True when the module comes from the overlay rather than SGLang."""
        path = self.module_file(module)
        return path is not None and self.overlay_pkg in path.parents

    # -- top-level names --------------------------------------------------------------------------
    def top_names(self, module: str) -> tuple[set[str], bool]:
        """Names bound at module level, and whether the module is open (`__getattr__`, `import *`)."""
        tree = self.tree(module)
        if tree is None:
            return set(), False
        names: set[str] = set()
        is_open = False
        for node in _toplevel(tree.body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
                is_open |= node.name == "__getattr__"
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    names |= _bound(t)
            elif isinstance(node, ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name == "*":
                        is_open = True
                    else:
                        names.add(a.asname or a.name)
        return names, is_open

    # -- classes ------------------------------------------------------------------------------------
    def resolve(self, module: str, name: str, depth: int = 0) -> str | None:
        """Follow re-exports until `name` is a class defined in some module; return its qualname."""
        tree = self.tree(module)
        if tree is None or depth > 8:
            return None
        for node in _toplevel(tree.body):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return f"{module}.{name}"
        imports = imports_of(tree, module, self._is_package(module))
        target = imports.get(name)
        if target is None:
            return None
        mod, _, attr = target.rpartition(".")
        return self.resolve(mod, attr, depth + 1) if mod else None

    def _is_package(self, module: str) -> bool:
        path = self.module_file(module)
        return path is not None and path.name == "__init__.py"

    def class_info(self, qualname: str) -> ClassInfo | None:
        """Names a class (and its bases) provides, from source."""
        if qualname in self._class_cache:
            return self._class_cache[qualname]
        self._class_cache[qualname] = None  # cycle guard
        module, _, cls_name = qualname.rpartition(".")
        tree = self.tree(module)
        node = (
            next((n for n in _toplevel(tree.body) if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
            if tree
            else None
        )
        if node is None:
            return None
        names: set[str] = set()
        methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        is_open = False
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(item.name)
                methods[item.name] = item
                is_open |= item.name in ("__getattr__", "__getattribute__")
            elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                for t in item.targets if isinstance(item, ast.Assign) else [item.target]:
                    names |= _bound(t)
            elif isinstance(item, ast.ClassDef):
                names.add(item.name)
        names |= _self_assigned(node)
        imports = imports_of(tree, module, self._is_package(module))  # type: ignore[arg-type]
        base_methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for base in node.bases:
            dotted = _dotted(base.value if isinstance(base, ast.Subscript) else base)
            if dotted is None:
                is_open = True
                continue
            target = _qualify(dotted, imports, module, tree)  # type: ignore[arg-type]
            external = _ALIASES.get(target, _ALIASES.get(dotted, target))
            if external in _EXTERNAL_BASES:
                names |= _EXTERNAL_BASES[external]
                continue
            mod, _, attr = target.rpartition(".")
            resolved = self.resolve(mod, attr) if mod else None
            info = self.class_info(resolved) if resolved else None
            if info is None:
                is_open = True  # a base we cannot read (third-party): do not guess
                continue
            names |= info.names
            is_open |= info.open
            for k, v in info.methods.items():
                base_methods.setdefault(k, v)
        base_methods.update(methods)
        info = ClassInfo(qualname, names, base_methods, is_open)
        self._class_cache[qualname] = info
        return info


@lru_cache(maxsize=512)
def _parse_cached(path: str, mtime: float) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    except (SyntaxError, UnicodeDecodeError, OSError):
        return None


def _parse(path: Path) -> ast.Module | None:
    return _parse_cached(str(path), path.stat().st_mtime)


def _toplevel(body: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level statements including those nested in if/try/with blocks (not in functions)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, ast.If):
            out += _toplevel(node.body) + _toplevel(node.orelse)
        elif isinstance(node, ast.Try):
            out += _toplevel(node.body) + _toplevel(node.orelse) + _toplevel(node.finalbody)
            for h in node.handlers:
                out += _toplevel(h.body)
        elif isinstance(node, ast.With):
            out += _toplevel(node.body)
    return out


def _bound(target: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)):
        return set().union(*(_bound(e) for e in target.elts))
    if isinstance(target, ast.Starred):
        return _bound(target.value)
    return set()


def _self_assigned(cls: ast.ClassDef) -> set[str]:
    """`self.x = ...` (also annotated, augmented, tuple, setattr(self, "x", ...)) anywhere in the class."""
    names: set[str] = set()

    def visit_target(t: ast.expr) -> None:
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
            names.add(t.attr)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                visit_target(e)
        elif isinstance(t, ast.Starred):
            visit_target(t.value)

    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                visit_target(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            visit_target(node.target)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            visit_target(node.target)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            visit_target(node.optional_vars)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "self"
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            names.add(node.args[1].value)
    return names


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        inner = _dotted(expr.value)
        return f"{inner}.{expr.attr}" if inner else None
    return None


def _absolute(module: str | None, level: int, current: str, is_package: bool) -> str:
    """Resolve a (possibly relative) `from` import against the importing module's name."""
    if level == 0:
        return module or ""
    parts = current.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(tree: ast.Module, current: str, is_package: bool) -> dict[str, str]:
    """Local name -> dotted target for every import in the module (any depth: TYPE_CHECKING, functions)."""
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node.module, node.level, current, is_package)
            for a in node.names:
                if a.name != "*":
                    found[a.asname or a.name] = f"{mod}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    found[a.asname] = a.name
                else:
                    found.setdefault(a.name.split(".")[0], a.name.split(".")[0])
    return found


def _qualify(dotted: str, imports: dict[str, str], module: str, tree: ast.Module) -> str:
    head, _, rest = dotted.partition(".")
    if head in imports:
        return imports[head] + (f".{rest}" if rest else "")
    if any(isinstance(n, ast.ClassDef) and n.name == head for n in _toplevel(tree.body)):
        return f"{module}.{dotted}"
    return dotted


def _annotation_names(ann: ast.expr | None) -> list[str]:
    """Dotted class names inside an annotation: X, "X", Optional[X], X | None, mod.X."""
    if ann is None:
        return []
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        try:
            return _annotation_names(ast.parse(ann.value, mode="eval").body)
        except SyntaxError:
            return []
    if isinstance(ann, ast.Subscript):
        head = _dotted(ann.value) or ""
        if head.split(".")[-1] in ("Optional", "Union", "Annotated"):
            inner = ann.slice
            elts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            if head.endswith("Annotated"):
                elts = elts[:1]
            return [n for e in elts for n in _annotation_names(e)]
        return []
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return _annotation_names(ann.left) + _annotation_names(ann.right)
    dotted = _dotted(ann)  # `None` is a Constant, never a name
    return [dotted] if dotted else []


def _sig_problems(
    base: ast.FunctionDef | ast.AsyncFunctionDef, over: ast.FunctionDef | ast.AsyncFunctionDef
) -> list[str]:
    """Why an override cannot stand in for the base method when called the way SGLang calls it."""
    problems: list[str] = []
    b_pos = [a.arg for a in base.args.posonlyargs + base.args.args][1:]
    o_pos_args = over.args.posonlyargs + over.args.args
    o_pos = [a.arg for a in o_pos_args][1:]
    o_kwonly = [a.arg for a in over.args.kwonlyargs]
    for i, name in enumerate(b_pos):
        if i < len(o_pos):
            if o_pos[i] != name:
                problems.append(f"parameter {i + 1} is {o_pos[i]!r}, base has {name!r}")
        elif over.args.vararg is None and name not in o_kwonly:
            problems.append(f"missing parameter {name!r}")
    for a in base.args.kwonlyargs:
        if a.arg not in o_pos and a.arg not in o_kwonly and over.args.kwarg is None:
            problems.append(f"missing keyword parameter {a.arg!r}")
    required_pos = o_pos[: len(o_pos) - len(over.args.defaults)]
    for name in required_pos[len(b_pos) :]:
        problems.append(f"extra required parameter {name!r}")
    for a, d in zip(over.args.kwonlyargs, over.args.kw_defaults):  # ast keeps them the same length
        if d is None and a.arg not in {x.arg for x in base.args.kwonlyargs} and a.arg not in b_pos:
            problems.append(f"extra required keyword parameter {a.arg!r}")
    if base.args.kwarg is not None and over.args.kwarg is None:
        problems.append(f"base accepts **{base.args.kwarg.arg} (callers pass extra keywords); the override must too")
    return problems


def _module_name(path: Path, overlay_root: Path) -> tuple[str, bool]:
    rel = path.relative_to(overlay_root).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def check_file(path: Path, overlay_root: Path, src: Sources, display_root: Path) -> list[Miss]:
    """All misses in one overlay file (`overlay_root` holds sglang/ and test/; module names are relative to it)."""
    tree = _parse(path)
    shown = path.relative_to(display_root).as_posix() if display_root in path.parents else str(path)
    if tree is None:
        return [Miss(shown, 1, "<file>", "does not parse as Python")]
    current, is_pkg = _module_name(path, overlay_root)
    misses: list[Miss] = []

    # 1. imports
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node.module, node.level, current, is_pkg)
            if not mod.startswith("sglang"):
                continue
            if src.module_file(mod) is None:
                misses.append(Miss(shown, node.lineno, mod, "module does not exist"))
                continue
            names, is_open = src.top_names(mod)
            for a in node.names:
                if a.name == "*" or is_open or a.name in names or src.module_file(f"{mod}.{a.name}"):
                    continue
                misses.append(Miss(shown, node.lineno, f"{mod}.{a.name}", "not defined at top level of the module"))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sglang") and src.module_file(a.name) is None:
                    misses.append(Miss(shown, node.lineno, a.name, "module does not exist"))

    imports = imports_of(tree, current, is_pkg)

    # 2. attributes on parameters annotated with SGLang classes
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        for p in params:
            for dotted in _annotation_names(p.annotation):
                target = _qualify(dotted, imports, current, tree)
                if not target.startswith("sglang.") or "." not in target:
                    continue
                mod, _, cls = target.rpartition(".")
                if src.is_overlay(mod):
                    continue
                qual = src.resolve(mod, cls)
                info = src.class_info(qual) if qual else None
                if info is None or info.open:
                    continue
                for node in ast.walk(fn):
                    if (
                        isinstance(node, ast.Attribute)
                        and isinstance(node.ctx, ast.Load)
                        and isinstance(node.value, ast.Name)
                        and node.value.id == p.arg
                        and node.attr not in info.names
                        and not node.attr.startswith("__")
                    ):
                        misses.append(
                            Miss(
                                shown,
                                node.lineno,
                                f"{p.arg}.{node.attr}",
                                f"{cls} ({qual}) has no attribute {node.attr!r} (not set as self.{node.attr}, "
                                "not a class attribute/field/method/property, not inherited)",
                            )
                        )

    # 3. AttentionBackend subclasses: public methods must exist on the SGLang base(s) of each class, compatibly
    for cls_node in ast.walk(tree):
        if not isinstance(cls_node, ast.ClassDef):
            continue
        if not _derives_from_backend(cls_node, imports, current, tree, src):
            continue
        base_info = _sglang_bases_info(cls_node, imports, current, tree, src)
        if base_info is None:
            continue
        for item in cls_node.body:
            if not isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) or item.name.startswith("_"):
                continue
            if item.name not in base_info.names:
                misses.append(
                    Miss(
                        shown,
                        item.lineno,
                        f"{cls_node.name}.{item.name}",
                        "public method not defined on the target AttentionBackend (SGLang never calls it; "
                        "make it _private or use the base's hook)",
                    )
                )
                continue
            base_fn = base_info.methods.get(item.name)
            if base_fn is None or any(_is_property(d) for d in item.decorator_list):
                continue
            for problem in _sig_problems(base_fn, item):
                misses.append(
                    Miss(
                        shown,
                        item.lineno,
                        f"{cls_node.name}.{item.name}",
                        f"signature differs from the base: {problem}",
                    )
                )
    return misses


def _is_property(dec: ast.expr) -> bool:
    name = _dotted(dec) or ""
    return name.endswith("property") or name.endswith(".setter")


def _class_bases(cls: ast.ClassDef, imports: dict[str, str], current: str, tree: ast.Module) -> list[str]:
    out = []
    for b in cls.bases:
        dotted = _dotted(b.value if isinstance(b, ast.Subscript) else b)
        if dotted:
            out.append(_qualify(dotted, imports, current, tree))
    return out


def _derives_from_backend(
    cls: ast.ClassDef, imports: dict[str, str], current: str, tree: ast.Module, src: Sources, depth: int = 0
) -> bool:
    if depth > 8:
        return False
    for target in _class_bases(cls, imports, current, tree):
        mod, _, name = target.rpartition(".")
        qual = src.resolve(mod, name) if mod else None
        if qual == BACKEND_BASE:
            return True
        if qual:
            qmod, _, qname = qual.rpartition(".")
            qtree = src.tree(qmod)
            node = (
                next((n for n in _toplevel(qtree.body) if isinstance(n, ast.ClassDef) and n.name == qname), None)
                if qtree
                else None
            )
            if node is not None and _derives_from_backend(
                node,
                imports_of(qtree, qmod, src._is_package(qmod)),
                qmod,
                qtree,
                src,
                depth + 1,  # type: ignore[arg-type]
            ):
                return True
    return False


def _sglang_bases_info(
    cls: ast.ClassDef, imports: dict[str, str], current: str, tree: ast.Module, src: Sources
) -> ClassInfo | None:
    """Merged names/methods of the SGLang (non-overlay) bases of an overlay backend class."""
    merged: ClassInfo | None = None
    for target in _class_bases(cls, imports, current, tree):
        mod, _, name = target.rpartition(".")
        qual = src.resolve(mod, name) if mod else None
        info = src.class_info(qual) if qual else None
        if info is None:
            continue
        if merged is None:
            merged = ClassInfo(info.qualname, set(info.names), dict(info.methods), info.open)
        else:
            merged.names |= info.names
            for k, v in info.methods.items():
                merged.methods.setdefault(k, v)
    return merged


def check(overlay_root: Path, layout: Layout, include_tests: bool = True) -> list[Miss]:
    """Check every .py file of an overlay (`overlay_root` holds sglang/ and test/) against a tree.

    `include_tests=False` checks only `sglang/**`: the SGLang plugin (sglang_sage.plugin) loads the
    package files alone, and a wheel install ships no overlay tests.
    """
    pkg_overlay = overlay_root / "sglang"
    src = Sources(layout, overlay_root)
    misses: list[Miss] = []
    for path in sorted(overlay_root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        if not include_tests and pkg_overlay not in path.parents:
            continue
        misses += check_file(path, overlay_root, src, overlay_root.parent)
    return misses
