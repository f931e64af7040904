"""auditpy.structs against the standard dataclasses: the same class text, decorated by each,
behaves the same (construction, defaults and factories, repr, equality, hashing, frozen
assignment, slots, inheritance, replace, fields, pickling), without importing inspect; and
its NamedTuple against typing's."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditpy import structs

SRC = Path(__file__).resolve().parents[1] / "src"

_OPTIONS = st.fixed_dictionaries({
    "frozen": st.booleans(), "slots": st.booleans(), "eq": st.booleans()})
_FIELD = st.tuples(
    st.sampled_from(["int", "str", "list[int]"]),
    st.sampled_from(["none", "default", "factory", "repr_off", "compare_off", "no_init"]),
)


def _class_text(fields: list[tuple[str, str]], options: dict[str, bool], lib: str) -> str:
    head = ", ".join(f"{k}={v}" for k, v in options.items())
    lines = [f"@{lib}.dataclass({head})", "class C:"]
    started_defaults = False
    for i, (kind, how) in enumerate(fields):
        value = {"int": "7", "str": "'s'", "list[int]": None}[kind]
        factory = {"int": "int", "str": "str", "list[int]": "list"}[kind]
        if how == "none" and started_defaults:
            how = "factory"
        if how == "default" and value is None:
            how = "factory"
        spec = {
            "none": "",
            "default": f" = {value}",
            "factory": f" = {lib}.field(default_factory={factory})",
            "repr_off": f" = {lib}.field(default_factory={factory}, repr=False)",
            "compare_off": f" = {lib}.field(default_factory={factory}, compare=False)",
            "no_init": f" = {lib}.field(default_factory={factory}, init=False)",
        }[how]
        started_defaults = started_defaults or how != "none"
        lines.append(f"    f{i}: {kind}{spec}")
    if not fields:
        lines.append("    pass")
    return "\n".join(lines)


def _build(text: str, lib: Any) -> type:
    namespace: dict[str, Any] = {"dataclasses": dataclasses, "structs": structs}
    exec(text, namespace)
    return namespace["C"]  # type: ignore[no-any-return]


def _outcome(action: Any) -> tuple[str, Any]:
    try:
        return "ok", action()
    except Exception as exc:  # the kind of error is what is compared
        return "error", type(exc).__name__.replace("FrozenInstanceError", "Frozen")


@given(st.lists(_FIELD, max_size=5), _OPTIONS, st.data())
def test_the_same_class_behaves_as_the_standard_dataclass(
        fields: list[tuple[str, str]], options: dict[str, bool], data: st.DataObject) -> None:
    ours = _build(_class_text(fields, options, "structs"), structs)
    theirs = _build(_class_text(fields, options, "dataclasses"), dataclasses)
    init_names = [f.name for f in dataclasses.fields(theirs) if f.init]
    assert [f.name for f in structs.fields(ours) if f.init] == init_names
    assert ours.__match_args__ == theirs.__match_args__  # type: ignore[attr-defined]
    required = {f.name for f in dataclasses.fields(theirs) if f.init
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    values = {}
    for name in init_names:
        kind = fields[int(name[1:])][0]
        strategy = {"int": st.integers(), "str": st.text(max_size=3),
                    "list[int]": st.lists(st.integers(), max_size=2)}[kind]
        if name in required or data.draw(st.booleans()):
            values[name] = data.draw(strategy)
    a_ours, a_theirs = ours(**values), theirs(**values)
    b_ours, b_theirs = ours(**values), theirs(**values)
    assert repr(a_ours) == repr(a_theirs)
    assert (a_ours == b_ours) == (a_theirs == b_theirs)
    assert (a_ours == 1) == (a_theirs == 1)
    assert _outcome(lambda: hash(a_ours) == hash(b_ours)) == _outcome(
        lambda: hash(a_theirs) == hash(b_theirs))
    if options["eq"]:  # (without eq, hashes are by identity)
        assert _outcome(lambda: hash(a_ours)) == _outcome(lambda: hash(a_theirs))
    assert ("__slots__" in ours.__dict__) == ("__slots__" in theirs.__dict__)
    for name in [f.name for f in dataclasses.fields(theirs)]:
        assert _outcome(lambda n=name: setattr(a_ours, n, 1)) == _outcome(
            lambda n=name: setattr(a_theirs, n, 1))
    if not (options["frozen"] and options["slots"]):
        # (3.11's frozen slots classes raise TypeError here: their __setattr__ names the
        # class that slots replaced; ours raises FrozenInstanceError, as 3.12's do)
        assert _outcome(lambda: setattr(a_ours, "other", 1)) == _outcome(
            lambda: setattr(a_theirs, "other", 1))
    if init_names:
        changed = {init_names[0]: values.get(init_names[0], 0)}
        assert repr(structs.replace(b_ours, **changed)) == repr(
            dataclasses.replace(b_theirs, **changed))


_TUPLE_FIELD = st.sampled_from(["plain", "default", "none_default"])


def _tuple_text(fields: list[str], lib: str) -> str:
    lines = [f"class T({lib}.NamedTuple):", '    """A tuple."""']
    started_defaults = False
    for i, how in enumerate(fields):
        if how == "plain" and started_defaults:
            how = "default"
        spec = {"plain": "", "default": f" = {i}", "none_default": " = None"}[how]
        started_defaults = started_defaults or how != "plain"
        lines.append(f"    f{i}: int | None{spec}")
    lines += ["", "    @property", "    def size(self) -> int:", "        return len(self)",
              "", "    def first(self) -> object:", "        return self[0] if self else None"]
    return "\n".join(lines)


@given(st.lists(_TUPLE_FIELD, max_size=5), st.data())
def test_the_same_named_tuple_behaves_as_typings(fields: list[str], data: st.DataObject
                                                 ) -> None:
    built = []
    for lib, module in (("structs", structs), ("typing", typing)):
        namespace: dict[str, Any] = {"__name__": "here", lib: module}
        exec("from __future__ import annotations\n" + _tuple_text(fields, lib), namespace)
        built.append(namespace["T"])
    ours, theirs = built
    assert ours._fields == theirs._fields
    assert ours._field_defaults == theirs._field_defaults
    assert ours.__doc__ == theirs.__doc__ and ours.__module__ == theirs.__module__ == "here"
    assert list(ours.__annotations__) == list(theirs.__annotations__)
    args = data.draw(st.lists(st.integers(), min_size=0, max_size=len(fields) + 1))
    a_ours, a_theirs = _outcome(lambda: ours(*args)), _outcome(lambda: theirs(*args))
    assert a_ours[0] == a_theirs[0]
    if a_ours[0] == "ok":
        one, other = a_ours[1], a_theirs[1]
        assert repr(one) == repr(other) and tuple(one) == tuple(other)
        assert one == other and hash(one) == hash(other)
        assert one.size == other.size and one.first() == other.first()
        assert one._asdict() == other._asdict()
        assert _outcome(lambda: one._replace(f0=5)) == _outcome(lambda: other._replace(f0=5))
        assert _outcome(lambda: setattr(one, "f0", 1)) == _outcome(
            lambda: setattr(other, "f0", 1))


def test_named_tuple_refuses_what_typing_refuses() -> None:
    for lib, module in (("structs", structs), ("typing", typing)):
        for body in ("    x: int = 1\n    y: int", "    x: int\n    def _replace(self): pass"):
            with pytest.raises((TypeError, AttributeError)):
                exec(f"class T({lib}.NamedTuple):\n{body}", {lib: module})


@structs.dataclass(frozen=True)
class Base:
    a: int


@structs.dataclass(frozen=True, slots=True)
class Sub(Base):
    b: int = 0


class Pair(structs.NamedTuple):
    a: int
    b: int = 2


def test_inheritance_post_init_and_pickling() -> None:
    @structs.dataclass
    class Counted:
        n: int
        seen: list[int] = structs.field(default_factory=list)

        def __post_init__(self) -> None:
            self.seen.append(self.n)

    sub = Sub(1, 2)
    assert repr(sub) == "Sub(a=1, b=2)"
    assert [f.name for f in structs.fields(sub)] == ["a", "b"]
    assert structs.replace(sub, b=5) == Sub(1, 5) and hash(sub) == hash(Sub(1, 2))
    assert pickle.loads(pickle.dumps(Sub(3, 4))) == Sub(3, 4)
    assert pickle.loads(pickle.dumps(Pair(3))) == Pair(3, 2) == (3, 2)
    with pytest.raises(structs.FrozenInstanceError):
        sub.a = 3  # type: ignore[misc]
    counted = Counted(4)
    assert counted.seen == [4] and Counted(4, [1]).seen == [1, 4]
    with pytest.raises(ValueError, match="mutable default"):
        structs.dataclass(type("Bad", (), {"__annotations__": {"x": "list[int]"}, "x": []}))
    with pytest.raises(TypeError, match="non-default argument"):
        structs.dataclass(type("Order", (), {"__annotations__": {"x": "int", "y": "int"},
                                             "x": 1}))
    with pytest.raises(TypeError):
        structs.fields(object())


def test_no_inspect_ast_or_dis() -> None:
    code = textwrap.dedent("""
        import sys
        from auditpy.structs import NamedTuple, dataclass, field
        @dataclass(frozen=True, slots=True)
        class P:
            x: int
            y: list = field(default_factory=list)
        assert P(1) == P(1)
        class N(NamedTuple):
            x: int
            y: int = 2
        assert N(1) == (1, 2)
        bad = [m for m in ("dataclasses", "inspect", "ast", "dis", "typing") if m in sys.modules]
        assert not bad, bad
    """)
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.returncode == 0, result.stderr
