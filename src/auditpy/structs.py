"""Record classes as the dataclasses module makes them, without the dataclasses module.

Importing dataclasses imports inspect, and with it ast, dis and tokenize: about a megabyte of
every daemon's resident memory, for a decorator that runs once per class at start-up. This
module does the same work for the subset auditpy uses (`frozen`, `slots`, `eq`, `repr`,
`field` with a default, a factory, `repr`, `compare` and `init`, `__post_init__`,
inheritance, `replace` and `fields`), and type checkers treat its `dataclass` as they treat
the standard one (PEP 681). The generated methods are the standard ones' equivalents: an
`__init__` compiled once per class, tuple comparison for `__eq__`, the same hashing rules.

`NamedTuple` is typing.NamedTuple's class syntax for the same reason: typing weighs half a
megabyte, and the class it makes is collections.namedtuple's, which is what is built here
(type checkers see typing's).
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform
    from typing import NamedTuple as NamedTuple

    T = TypeVar("T")
else:
    def dataclass_transform(**_kwargs: object) -> Callable[[T], T]:
        return lambda decorator: decorator


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

#: where a class keeps its fields (its own and inherited), by name, in order
_FIELDS = "__struct_fields__"


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen instance was assigned or deleted."""


class Field:
    """One field: its name, its default or factory, and what the generated methods do
    with it."""

    __slots__ = ("compare", "default", "default_factory", "init", "name", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool,
                 compare: bool, init: bool) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare
        self.init = init

    def __repr__(self) -> str:
        return (f"Field(name={self.name!r}, default={self.default!r}, "
                f"default_factory={self.default_factory!r}, repr={self.repr}, "
                f"compare={self.compare}, init={self.init})")


def field(*, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True,
          compare: bool = True, init: bool = True) -> Any:
    """A field's options, as dataclasses.field takes them."""
    return Field(default, default_factory, repr, compare, init)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _collect(cls: type) -> dict[str, Field]:
    found: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        found.update(getattr(base, _FIELDS, {}))
    # the class's own annotations (inspect.get_annotations would import inspect)
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in own.items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        spec = value if isinstance(value, Field) else Field(value, MISSING, True, True, True)
        spec.name = name
        if isinstance(spec.default, (list, dict, set)):
            raise ValueError(f"mutable default {type(spec.default).__name__} for field "
                             f"{name} is not allowed: use default_factory")
        found[name] = spec
    return found


def _init_source(cls: type, fields: list[Field], frozen: bool, post_init: bool
                 ) -> tuple[str, dict[str, Any]]:
    """__init__'s text, and the defaults and factories it names."""
    names: dict[str, Any] = {"__struct_missing": MISSING, "__struct_object": object}
    params = ["self"]
    body = []
    seen_default = False
    for f in fields:
        default_name = f"__struct_default_{f.name}"
        factory_name = f"__struct_factory_{f.name}"
        if f.init:
            if f.default is not MISSING:
                names[default_name] = f.default
                params.append(f"{f.name}={default_name}")
                seen_default = True
                value = f.name
            elif f.default_factory is not MISSING:
                names[factory_name] = f.default_factory
                params.append(f"{f.name}=__struct_missing")
                seen_default = True
                value = f"{factory_name}() if {f.name} is __struct_missing else {f.name}"
            else:
                if seen_default:
                    raise TypeError(f"non-default argument {f.name!r} follows default "
                                    f"argument in {cls.__qualname__}")
                params.append(f.name)
                value = f.name
        elif f.default is not MISSING:
            names[default_name] = f.default
            value = default_name
        elif f.default_factory is not MISSING:
            names[factory_name] = f.default_factory
            value = f"{factory_name}()"
        else:
            continue
        if frozen:
            body.append(f"  __struct_object.__setattr__(self, {f.name!r}, {value})")
        else:
            body.append(f"  self.{f.name} = {value}")
    if post_init:
        body.append("  self.__post_init__()")
    source = f"def __init__({', '.join(params)}):\n" + ("\n".join(body) or "  pass") + "\n"
    return source, names


def _compile(source: str, names: dict[str, Any], cls: type) -> Any:
    exec(source, names)  # the text is built here, from the field names
    function = names[source[4 : source.index("(")]]
    function.__qualname__ = f"{cls.__qualname__}.{function.__name__}"
    return function


def _put(cls: type, name: str, value: object) -> None:
    """Set a generated attribute on the class (one place for the type checker to accept
    assignments to methods)."""
    setattr(cls, name, value)


def _key(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple of the compared fields, as dataclasses' __eq__ and __hash__ build it, by
    a C getter shared through closures rather than methods compiled per class (each of
    those is a code object and a globals dict held for the process's life)."""
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    if not names:
        return lambda obj: ()
    return attrgetter(*names)


def _make(cls: type, frozen: bool, slots: bool, eq: bool, repr_: bool, init: bool) -> type:
    spec = _collect(cls)
    fields = list(spec.values())
    for f in fields:  # as dataclasses: a field() class attribute becomes its default
        if isinstance(cls.__dict__.get(f.name), Field):
            if f.default is MISSING:
                delattr(cls, f.name)
            else:
                _put(cls, f.name, f.default)
    _put(cls, _FIELDS, spec)
    if init:
        source, names = _init_source(cls, fields, frozen, hasattr(cls, "__post_init__"))
        _put(cls, "__init__", _compile(source, names, cls))
    shown = tuple(f.name for f in fields if f.repr)
    key = _key([f.name for f in fields if f.compare])
    if repr_ and "__repr__" not in cls.__dict__:
        def __repr__(self: Any) -> str:
            inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
            return f"{type(self).__qualname__}({inner})"

        __repr__.__qualname__ = f"{cls.__qualname__}.__repr__"
        _put(cls, "__repr__", __repr__)
    if eq and "__eq__" not in cls.__dict__:
        def __eq__(self: Any, other: Any) -> Any:
            if other.__class__ is self.__class__:
                return key(self) == key(other)
            return NotImplemented

        __eq__.__qualname__ = f"{cls.__qualname__}.__eq__"
        _put(cls, "__eq__", __eq__)
    if "__hash__" not in cls.__dict__ or cls.__dict__["__hash__"] is None:
        if eq and frozen:
            def __hash__(self: Any) -> int:
                return hash(key(self))

            __hash__.__qualname__ = f"{cls.__qualname__}.__hash__"
            _put(cls, "__hash__", __hash__)
        elif eq:
            _put(cls, "__hash__", None)
    _put(cls, "__match_args__", tuple(f.name for f in fields if f.init))
    if slots:
        cls = _with_slots(cls, fields, frozen)
    if frozen:
        _freeze(cls, frozenset(spec))
    return cls


def _with_slots(cls: type, fields: list[Field], frozen: bool) -> type:
    """A new class with __slots__ for the fields (a class's slots are fixed at creation)."""
    namespace = dict(cls.__dict__)
    inherited = {name for base in cls.__mro__[1:] for name in getattr(base, "__slots__", ())}
    names = tuple(f.name for f in fields if f.name not in inherited)
    for name in (*names, "__dict__", "__weakref__"):
        namespace.pop(name, None)
    namespace["__slots__"] = names
    if frozen:
        def __getstate__(self: Any) -> tuple[Any, ...]:
            return tuple(getattr(self, f.name) for f in fields)

        def __setstate__(self: Any, state: tuple[Any, ...]) -> None:
            for f, value in zip(fields, state, strict=True):
                object.__setattr__(self, f.name, value)

        namespace["__getstate__"] = __getstate__
        namespace["__setstate__"] = __setstate__
    new = type(cls)(cls.__name__, cls.__bases__, namespace)
    new.__qualname__ = cls.__qualname__
    return new


def _freeze(cls: type, own: frozenset[str]) -> None:
    """Assignment and deletion of a field (or of anything, on the class itself) raise."""
    def __setattr__(self: Any, name: str, value: object) -> None:
        if type(self) is cls or name in own:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in own:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    _put(cls, "__setattr__", __setattr__)
    _put(cls, "__delattr__", __delattr__)


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(cls: type[T] | None = None, /, *, frozen: bool = False, slots: bool = False,
              eq: bool = True, repr: bool = True, init: bool = True
              ) -> Any:
    """dataclasses.dataclass, for the options listed in the module's docstring."""
    def wrap(klass: type[T]) -> type[T]:
        return _make(klass, frozen, slots, eq, repr, init)

    return wrap if cls is None else wrap(cls)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record class or instance, in order."""
    try:
        return tuple(getattr(obj, _FIELDS).values())
    except AttributeError:
        raise TypeError(f"{obj!r} is not a record class or instance") from None


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of `obj` with `changes`, made through its __init__ (as dataclasses.replace)."""
    for f in getattr(obj, _FIELDS).values():
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name} is declared with init=False, it cannot be "
                                 "specified with replace()")
            continue
        if f.name not in changes:
            changes[f.name] = getattr(obj, f.name)
    return obj.__class__(**changes)


if not TYPE_CHECKING:
    class _NamedTupleMeta(type):
        """Turns a class body of annotated fields (defaults last), methods and properties
        into a collections.namedtuple class, as typing.NamedTuple does."""

        def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any]
                    ) -> type:
            if not bases:
                return super().__new__(mcls, name, bases, namespace)
            if bases != (NamedTuple,):
                raise TypeError("a NamedTuple class can only derive from NamedTuple")
            import collections

            names = tuple(namespace.get("__annotations__", {}))
            defaults = [namespace[f] for f in names if f in namespace]
            if any(f not in namespace for f in names[len(names) - len(defaults):]):
                raise TypeError(f"{name}: a field without a default follows one with a "
                                "default")
            cls: type = collections.namedtuple(name, names, defaults=defaults,
                                               module=namespace.get("__module__"))
            for key, value in namespace.items():
                if key in names or key in ("__module__", "__dict__", "__weakref__"):
                    continue
                if key in _NAMEDTUPLE_OWN:
                    raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
                setattr(cls, key, value)
            return cls

    #: what collections.namedtuple defines that a class body may not replace
    _NAMEDTUPLE_OWN = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__",
                                 "_fields", "_field_defaults", "_make", "_replace",
                                 "_asdict", "_source"})

    class NamedTuple(metaclass=_NamedTupleMeta):
        """typing.NamedTuple's class syntax; see the module's docstring."""
