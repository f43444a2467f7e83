"""The package's folders are its architecture (docs/DESIGN.md, "Package map"): the map names every module,
and imports only run the way the map says, data → train → evaluate → ship, with team used by all."""

import ast
import re

from imgclf.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "imgclf"
ORDER = ["data", "train", "evaluate", "ship"]  # a room may import from the rooms before it
ROOMS = [*ORDER, "team"]
COMMANDS = {
    "serve",
    "tune",
    "launch",
    "models",
    "server",
    "remote",
    "ui",
    "monitor",
    "feedback",
}  # python -m imgclf.<name>


def _room(module: str) -> str:
    """``imgclf.data.ingest`` -> ``data``; a top-level module (``imgclf.paths``) -> ``top``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ROOMS else "top"


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("imgclf")}
    return found


def _allowed(room: str, target: str) -> bool:
    if target in (room, "top"):
        return True
    if room == "top":  # the shared modules import no room; the commands only their own module
        return False
    if target == "team":
        return True
    return room in ORDER and target in ORDER and ORDER.index(target) < ORDER.index(room)


def test_imports_follow_the_rooms():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        room = _room(module) if path.parent != PACKAGE else "top"
        for target in _imports(path):
            if room == "top" and path.stem in COMMANDS and target.startswith(f"imgclf.{_room(target)}.{path.stem}."):
                continue  # imgclf/serve.py -> imgclf.ship.serve.main: the command's own module
            if not _allowed(room, _room(target)):
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports {target}")
    assert not wrong, "imports against the package map (docs/DESIGN.md):\n" + "\n".join(wrong)


def test_the_map_names_every_module_and_only_those():
    design = (REPO_ROOT / "docs" / "DESIGN.md").read_text()
    block = design.split("## Package map", 1)[1].split("\n## ", 1)[0]
    mapped, room = set(), None
    for line in block.splitlines():
        if match := re.match(r"^      (\w+)/\s", line):
            room = match.group(1)
        elif match := re.match(r"^        (\w+\.py)\s", line):
            mapped.add(f"{room}/{match.group(1)}")
        elif re.match(r"^      (\w+\.py)", line):
            mapped |= set(re.findall(r"\w+\.py", line))
    present = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" or path.parent == PACKAGE
    }
    assert mapped == present, f"missing from the map: {sorted(present - mapped)}; gone: {sorted(mapped - present)}"


def test_commands_are_entry_points_only():
    """A command module holds no logic: its docstring, one import from its room, and the __main__ call."""
    for name in COMMANDS:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        kinds = [type(node).__name__ for node in tree.body]
        assert kinds in (["Expr", "ImportFrom", "Assign", "If"], ["Expr", "ImportFrom", "If"]), (name, kinds)
