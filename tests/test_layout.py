"""The package's rooms, read from its source: no import circle (imports inside functions count), no
import of another module's private names, Hydra's config objects only where configs are composed,
no room over 15 modules, no backslash continuations."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scalelab"
PLUGINS = PACKAGE.parent / "hydra_plugins"
MAX_MODULES = 15
# where a DictConfig may be read: the command line, the schemas, the build of a run, sweep planning
CONFIG_ROOMS = ("cli/", "config.py", "train/build.py", "sweep/")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(name: str, path: Path):
    """(imported module, imported names, line) of every import of the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names], node.lineno


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        targets = set()
        for module, names, _ in imports(name, path):
            for candidate in [f"{module}.{n}" for n in names] + [module]:
                if candidate in known and candidate != name:
                    targets.add(candidate)
                    break
        edges[name] = targets
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    found = cycle(graph())
    assert found is None, "import circle: " + " -> ".join(found)


def test_cycle_finder_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_names_imported_from_other_modules():
    bad = []
    for name, path in modules().items():
        for module, names, line in imports(name, path):
            if module.startswith("scalelab") and module != name:
                bad += [f"{path.relative_to(PACKAGE.parent)}:{line} {module}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, "private names imported from another module:\n" + "\n".join(bad)


def test_config_objects_only_where_configs_are_composed():
    bad = []
    for name, path in modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(CONFIG_ROOMS):
            continue
        for module, _, line in imports(name, path):
            if module.split(".")[0] in ("omegaconf", "hydra"):
                bad.append(f"scalelab/{rel}:{line} imports {module}")
    assert not bad, "omegaconf/hydra outside cli/, config.py, train/build.py, sweep/:\n" + "\n".join(bad)


def test_no_room_holds_more_than_15_modules():
    crowded = {}
    for folder in [PACKAGE, *[p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"]]:
        count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        if count > MAX_MODULES:
            crowded[str(folder.relative_to(PACKAGE.parent))] = count
    assert not crowded, f"folders over {MAX_MODULES} modules: {crowded}"


def test_no_backslash_continuations():
    bad = []
    for path in [*PACKAGE.rglob("*.py"), *PLUGINS.rglob("*.py")]:
        source = path.read_text()
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        lines = source.splitlines()
        inside = {n for t in tokens if t.type == tokenize.STRING for n in range(t.start[0], t.end[0])}
        bad += [f"{path.relative_to(PACKAGE.parent)}:{i}" for i, text in enumerate(lines, 1)
                if text.rstrip().endswith("\\") and i not in inside and not text.lstrip().startswith("#")]
    assert not bad, "backslash continuations:\n" + "\n".join(bad)


def test_run_has_no_config_attribute():
    from dataclasses import fields

    from scalelab.train.build import Run

    assert not {"cfg", "config_node"} & {f.name for f in fields(Run)}


def test_comments_name_files_that_exist():
    """A path `scalelab/....py` named in the package's text (comments, docstrings, messages) exists."""
    import re

    missing = []
    for path in [*PACKAGE.rglob("*.py"), *PLUGINS.rglob("*.py")]:
        for named in re.findall(r"scalelab/[\w/]+\.py", path.read_text()):
            if not (PACKAGE.parent / named).exists():
                missing.append(f"{path.relative_to(PACKAGE.parent)} names {named}")
    assert not missing, "\n".join(missing)
