"""The layers point one way: commands on top, the pure method at the bottom, and no private name crosses a folder.

Read from the source with `ast` (nothing is imported), so an import inside a function counts as much
as one at the top of a file: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "reczero"

# Bottom to top. A module may import from its own layer and from the layers below it, never from above.
# Layer 0 is the pure method (torch and the standard library: tested on hand-made tensors and strings).
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "reczero",
        "reczero.answers",
        "reczero.grpo",
        "reczero.metrics",
        "reczero.prompts",
        "reczero.rationales",
        "reczero.reasoning",
        "reczero.rewards",
        "reczero.scale",
    ),
    ("reczero.policy",),
    ("reczero.data",),
    ("reczero.rollout",),
    ("reczero.modules", "reczero.recone"),
    ("reczero.evaluation",),
    ("reczero.cli", "reczero.__main__"),
)
# The third-party packages the pure method may import (style: keep imports light; numpy for the bootstrap).
PURE_THIRD_PARTY = {"torch", "numpy"}

# Known leftovers, each to be emptied by the change it names. (importer, imported module, name)
PRIVATE_ALLOWED = {
    # rollout/engine.py is being rewritten elsewhere (issue 23's decoding-loop split): it should import
    # `CACHE_KWARG` and `cache_of`, the public names policy/forward.py now has, then this entry goes.
    ("reczero.rollout.engine", "reczero.policy.forward", "_CACHE_KWARG"),
    ("reczero.rollout.engine", "reczero.policy.forward", "_cache_of"),
}
LAYER_ALLOWED: set[tuple[str, str]] = set()  # (importer, imported module): none left


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    module: str  # the reczero module imported from
    names: tuple[str, ...]  # the names taken from it ("" for `import reczero.x`)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder(module: str, is_package: bool = False) -> str:
    """The folder a module's file sits in (a package's own __init__ sits in the package)."""
    return module if is_package else module.rpartition(".")[0]


def layer(module: str) -> int:
    """The layer of `module`: the longest listed prefix wins (`reczero.data.x` is data, `reczero.prompts` pure)."""
    best, best_len = None, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> tuple[list[Import], set[str]]:
    """Every reczero import in `path` (module level or inside functions) and its top-level third-party ones."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found, third_party = [], set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "reczero":
                third_party.add(target.split(".")[0])
                continue
            for alias in node.names:  # `from reczero import prompts` imports the module reczero.prompts
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*sub.split("."))
                ).is_dir()
                found.append(
                    Import(importer, sub if is_module else target, () if is_module else (alias.name,), node.lineno)
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "reczero":
                    found.append(Import(importer, alias.name, (), node.lineno))
                else:
                    third_party.add(alias.name.split(".")[0])
    return found, third_party


def private_attributes(path: Path) -> list[tuple[str, str, int]]:
    """(module, `_name`, line) for `module._name` where `module` was imported from reczero under that name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "reczero":
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reczero.") and alias.asname:
                    bound[alias.asname] = alias.name
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound):
            continue
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            out.append((bound[node.value.id], node.attr, node.lineno))
    return out


ALL = [(path, *imports_of(path)) for path in sources()]


def test_every_module_has_a_layer():
    for path in sources():
        layer(module_name(path))


def test_imports_point_down():
    upward = []
    for path, found, _ in ALL:
        for imp in found:
            if layer(imp.module) > layer(imp.importer) and (imp.importer, imp.module) not in LAYER_ALLOWED:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{imp.line}: {imp.importer} imports {imp.module}")
    assert not upward, "imports from a higher layer:\n" + "\n".join(dict.fromkeys(upward))


def test_the_pure_method_imports_only_torch_numpy_and_the_standard_library():
    import sys

    heavy = []
    for path, _, third_party in ALL:
        if layer(module_name(path)) == 0:
            for name in third_party - PURE_THIRD_PARTY - {"__future__"}:
                if name not in sys.stdlib_module_names:
                    heavy.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert not heavy, "\n".join(heavy)


def test_private_names_stay_in_their_folder():
    crossing = []
    for path, found, _ in ALL:
        home = folder(module_name(path), path.name == "__init__.py")
        for imp in found:
            source_is_package = (PACKAGE.parent / Path(*imp.module.split("."))).is_dir()
            if folder(imp.module, source_is_package) == home:
                continue
            for name in imp.names:
                if name.startswith("_") and (imp.importer, imp.module, name) not in PRIVATE_ALLOWED:
                    crossing.append(f"{path.relative_to(PACKAGE.parent)}:{imp.line}: {name} from {imp.module}")
        for module, name, line in private_attributes(path):
            if folder(module, (PACKAGE.parent / Path(*module.split("."))).is_dir()) != home:
                crossing.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module}.{name}")
    assert not crossing, "private names used outside their folder:\n" + "\n".join(crossing)


def test_the_allow_lists_hold_only_what_is_still_there():
    """An entry whose import is gone must leave the allow-list, so the list only ever shrinks."""
    present = {(imp.importer, imp.module, name) for _, found, _ in ALL for imp in found for name in imp.names}
    pairs = {(imp.importer, imp.module) for _, found, _ in ALL for imp in found}
    assert present >= PRIVATE_ALLOWED, f"stale entries: {PRIVATE_ALLOWED - present}"
    assert pairs >= LAYER_ALLOWED, f"stale entries: {LAYER_ALLOWED - pairs}"


@pytest.mark.parametrize(
    "module, expected",
    [("reczero.prompts", 0), ("reczero.policy.forward", 1), ("reczero.data.readers.amazon", 2), ("reczero.cli", 6)],
)
def test_layer_lookup(module, expected):
    assert layer(module) == expected
