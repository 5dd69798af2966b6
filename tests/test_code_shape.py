"""The code's shape rules (docs/testing.md), read from the source with `ast`: no class over 250 lines, no
function or method over 60, and an import inside a function (or under `if TYPE_CHECKING:`) only where a
comment says why, on its line or the line just above. One comment may head a run of such imports (blank
lines between them allowed, as the import sorter groups them).

Lengths run from a definition's `def`/`class` line to its last line, decorators left out. KNOWN lists what
still breaks a rule; an entry that no longer does fails the test too, so the list only shrinks."""

import ast
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("config", "proxy", "providers", "settings_app", "identity", "portal", "audit", "bench")
SKIPPED_DIRS = frozenset({"migrations", "tests", ".venv", "__pycache__"})

MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60

# (path, qualified name, rule) of what still breaks a rule, to be mended: none now. An entry added here must
# still break its rule, so the list only shrinks.
KNOWN: frozenset[tuple[str, str, str]] = frozenset()


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    qualname: str
    rule: str  # "class", "function" or "import"
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.path, self.qualname, self.rule)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.qualname}: {self.detail}"


PRAGMAS = ("# noqa", "# type:", "# pragma")  # comments for a tool, which say nothing of why


def comment_lines(source: str) -> dict[int, str]:
    """The comments, by line number (a `#` in a string is no comment), but the tools' pragmas."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {
        token.start[0]: token.string
        for token in tokens
        if token.type == tokenize.COMMENT and not token.string.startswith(PRAGMAS)
    }


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ShapeChecker:
    """Walks one module's tree and collects what breaks the shape rules."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.comments = comment_lines(source)
        self.tree = ast.parse(source, filename=path)
        self.findings: list[Finding] = []

    def check(self) -> list[Finding]:
        self._body(self.tree.body, (), lazy=False)
        return self.findings

    def _add(self, node: ast.stmt, qualname: tuple[str, ...], rule: str, detail: str) -> None:
        name = ".".join(qualname) or "<module>"
        self.findings.append(Finding(self.path, node.lineno, name, rule, detail))

    def _body(self, body: list[ast.stmt], qualname: tuple[str, ...], lazy: bool) -> None:
        """One block of statements; `lazy` when its imports run late (in a function, under TYPE_CHECKING)."""
        explained_before: ast.stmt | None = None  # the import just before, when it was explained
        for index, node in enumerate(body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                if lazy:
                    if self._explained(node, explained_before, first=index == 0):
                        explained_before = node
                    else:
                        explained_before = None
                        source = self.lines[node.lineno - 1].strip()
                        self._add(node, qualname, "import", f"import with no comment saying why: {source}")
                continue
            explained_before = None
            self._node(node, qualname, lazy)

    def _node(self, node: ast.stmt, qualname: tuple[str, ...], lazy: bool) -> None:
        if isinstance(node, ast.ClassDef):
            inner = (*qualname, node.name)
            self._length(node, inner, "class", MAX_CLASS_LINES)
            self._body(node.body, inner, lazy)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            inner = (*qualname, node.name)
            self._length(node, inner, "function", MAX_FUNCTION_LINES)
            self._body(node.body, inner, lazy=True)
        elif isinstance(node, ast.If) and is_type_checking(node):
            self._body(node.body, qualname, lazy=True)
            self._body(node.orelse, qualname, lazy)
        else:  # if, for, while, with, try, match: their blocks
            for field in ("body", "orelse", "finalbody"):
                self._body(getattr(node, field, []), qualname, lazy)
            for block in (*getattr(node, "handlers", ()), *getattr(node, "cases", ())):
                self._body(block.body, qualname, lazy)

    def _length(self, node: ast.stmt, qualname: tuple[str, ...], rule: str, limit: int) -> None:
        length = last_line(node) - node.lineno + 1
        if length > limit:
            self._add(node, qualname, rule, f"{rule} of {length} lines (at most {limit})")

    def _explained(self, node: ast.stmt, before: ast.stmt | None, first: bool) -> bool:
        """A comment on the import's lines or a line of comment just above it (or one closing the line
        that opens the block, `def ...:  # why`, when the import comes first in it), or the explained
        import just before it with only blank lines between."""
        if any(line in self.comments for line in range(node.lineno, last_line(node) + 1)):
            return True
        above = node.lineno - 1
        if above in self.comments and (first or self.lines[above - 1].lstrip().startswith("#")):
            return True
        if before is None:
            return False
        return all(not line.strip() for line in self.lines[last_line(before) : node.lineno - 1])


def last_line(node: ast.stmt) -> int:
    return node.end_lineno or node.lineno


def project_modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts):
                yield path


def project_findings() -> list[Finding]:
    findings = []
    for path in project_modules():
        findings += ShapeChecker(path.relative_to(ROOT).as_posix(), path.read_text()).check()
    return findings


def check_source(source: str) -> list[str]:
    return [f"{f.line} {f.qualname} {f.rule}" for f in ShapeChecker("planted.py", source).check()]


def test_every_package_is_walked():
    walked = {path.relative_to(ROOT).parts[0] for path in project_modules()}
    assert walked == set(PACKAGES)
    assert not any("migrations" in path.parts for path in project_modules())


def test_the_code_keeps_its_shape():
    findings = project_findings()
    new = [str(f) for f in findings if f.key not in KNOWN]
    assert not new, "the shape rules (tests/test_code_shape.py) are broken at:\n" + "\n".join(new)


def test_the_known_breaks_are_still_there():
    """An entry of KNOWN whose code now keeps the rules leaves the list."""
    found = {f.key for f in project_findings()}
    gone = sorted(KNOWN - found)
    assert not gone, "these keep the rules now: take them out of KNOWN:\n" + "\n".join(map(str, gone))


LONG_BODY = "".join(f"    x{i} = {i}\n" for i in range(59))  # with its def, a function of 60 lines
LONG_METHOD_BODY = LONG_BODY.replace("    ", "        ")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (f"def f():\n{LONG_BODY}", []),  # 60 lines
        (f"def f():\n{LONG_BODY}    return 1\n", ["1 f function"]),  # 61 lines
        (f"@decorated\nasync def f():\n{LONG_BODY}    return 1\n", ["2 f function"]),  # from the def
        (f"@decorated\nasync def f():\n{LONG_BODY}", []),  # the decorator is not counted
        (f"class A:\n    def m(self):\n{LONG_METHOD_BODY}        return\n", ["2 A.m function"]),
        ("class A:\n" + "    x = 1\n" * 249, []),  # 250 lines
        ("class A:\n" + "    x = 1\n" * 250, ["1 A class"]),
        ("class A:\n    class B:\n" + "        x = 1\n" * 249, ["1 A class"]),
        ("def f():\n    import os\n", ["2 f import"]),
        ("def f():\n    import os  # why\n", []),
        ("def f():\n    # why\n    import os\n", []),
        ("def f():\n    # why\n\n    import os\n", ["4 f import"]),
        ("def f():\n    x = 1  # of x\n    import os\n", ["3 f import"]),
        ("def f():  # why\n    import os\n", []),
        ("def f():\n    import os  # noqa: F401\n", ["2 f import"]),
        ("def f():\n    # type: ignore\n    import os\n", ["3 f import"]),
        ("def f():\n    # why\n    import os\n\n    from a import b\n    import c\n", []),
        ("def f():\n    # why\n    import os\n    x = 1\n    import c\n", ["5 f import"]),
        ("def f():\n    s = '# no comment'\n    import os\n", ["3 f import"]),
        ("class A:\n    def m(self):\n        if x:\n            import os\n", ["4 A.m import"]),
        ("def f():\n    try:\n        pass\n    except E:\n        import os\n", ["5 f import"]),
        ("def f():\n    def g():\n        import os\n", ["3 f.g import"]),
        ("def f():\n    with x:\n        for y in z:\n            import os\n", ["4 f import"]),
        ("import os\nif x:\n    import sys\nclass A:\n    import re\n", []),
        ("if TYPE_CHECKING:\n    import os\nelse:\n    import sys\n", ["2 <module> import"]),
        ("if typing.TYPE_CHECKING:  # a cycle otherwise\n    import os\n", []),
        ("def f():\n    from x import (  # why\n        a,\n    )\n", []),
        ("def f():\n    from x import (\n        a,  # why\n    )\n", []),
    ],
)
def test_the_checker_finds_what_breaks_the_rules(source, expected):
    assert check_source(source) == expected
