"""The package's structure, as docs/api.md draws it: layers that import only downwards, no
import circle, commands that are thin, and one owner of output paths."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "segflow"

#: The layers, lowest first: a module may import its own layer's and lower layers' modules.
LAYERS = [
    ("infra",),
    ("data", "networks", "metrics"),
    ("methods",),
    ("runs",),
    ("inference",),
    ("engine",),
    ("reports",),
    ("conf",),
    ("bench",),
    ("<commands>",),
]
#: The command modules: each ``python -m segflow.<x>`` is its own command.
COMMANDS = {"segflow.train", "segflow.eval", "segflow.predict", "segflow.prepare",
            "segflow.report", "segflow.compare", "segflow.export", "segflow.bench.__main__",
            "segflow.bench.gpu_check", "segflow.bench.profile"}


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """segflow modules ``path`` imports anywhere (top level or inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # a name that is a module is that module; any other name comes from ``base``
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("segflow.") and t != name:
                found.add(t)
    return found


def layer(module: str) -> int:
    if module in COMMANDS:
        return len(LAYERS) - 1
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/api.md")


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: {t for t in imports(p, m, known) if t != "segflow"} for m, p in mods.items()
            if m != "segflow"}


def test_every_import_runs_downwards_and_no_command_is_imported():
    wrong = []
    for mod, targets in graph().items():
        for t in targets:
            if t in COMMANDS:
                wrong.append(f"{mod} imports the command {t}")
            elif layer(t) > layer(mod):
                wrong.append(f"{mod} (layer {layer(mod)}) imports {t} (layer {layer(t)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_import_graph_has_no_circle():
    g = graph()
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(nxt_ := node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[nxt_] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not circles, circles


def test_a_small_package_root_and_thin_commands():
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= 10, root
    mods = modules()
    for command in COMMANDS:
        lines = len(mods[command].read_text().splitlines())
        assert lines <= 100, f"{command} has {lines} lines: move the work into the library"
        assert "@command" in mods[command].read_text(), f"{command} lacks the error wrapper"


#: How an output path is built: a folder or record name joined onto a path, a glob over
#: runs, or the output root's environment variable.
PATH_BUILDING = re.compile(
    r"""/\s*["'](runs|multirun|eval|predict|export|reports?|compare|profile|gpu_check|bench|"""
    r"""checkpoints|\.hydra|metrics\.json|per_image\.csv|preprocess\.json|tensorboard)["']"""
    r"""|glob\(\s*["'](runs|multirun|eval)/|SEGFLOW_OUTPUT_DIR|\boutput_root\(\)""")


def test_output_paths_are_built_only_in_the_layout():
    owner = PKG / "runs" / "layout.py"
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == owner:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PATH_BUILDING.search(code) and not code.strip().startswith(("\"", "'", "``")):
                found.append(f"{path.relative_to(PKG.parent)}:{n}: {line.strip()}")
    assert PATH_BUILDING.search('run / "metrics.json"')  # the scan finds what it looks for
    assert not found, "\n".join(found)


def test_the_code_map_names_every_package():
    text = (PKG.parent / "docs" / "api.md").read_text()
    packages = sorted({p.parent.relative_to(PKG.parent).as_posix()
                       for p in PKG.rglob("__init__.py")})
    missing = [p for p in packages if f"`{p}/`" not in text]
    assert not missing, f"docs/api.md's code map lacks {missing}"


def test_the_readme_stays_a_guide():
    lines = (PKG.parent / "README.md").read_text().splitlines()
    assert len(lines) <= 450, f"README.md has {len(lines)} lines: move reference detail to docs/"


def test_trainer_debug_is_only_an_alias_of_debug_default():
    import yaml

    alias = yaml.safe_load((PKG / "conf" / "trainer" / "debug.yaml").read_text())
    assert set(alias) == {"defaults"}, "trainer=debug must write nothing of its own"
    assert "/debug/default" in alias["defaults"] and "/trainer/default@trainer" in alias["defaults"]
