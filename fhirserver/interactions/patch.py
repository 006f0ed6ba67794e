"""The PATCH interaction's two formats: JSON Patch (RFC 6902) and FHIRPath Patch (FHIR R4 ``fhirpatch.html``).

Both functions work on a deep copy of the resource and return the patched copy; the input is never mutated.
Numbers keep their Python types (``decimal.Decimal`` stays ``Decimal``).

Errors: a malformed patch document is a ``BadRequest`` (400); a well-formed patch that cannot be applied to
this resource (missing target, failed ``test``, ambiguous FHIRPath match, changed ``resourceType``) is an
``Unprocessable`` (422). Messages name the operation by its 0-based position in the document.

FHIRPath Patch paths are evaluated by a small navigator that returns *locations* (the container and the
key/index) rather than values. Supported subset::

    path      := (ResourceType | name) ('.' step | '[' n ']')*    a leading ResourceType must match the resource
    step      := name | 'first()' | 'last()' | 'where(' cond (' and ' cond)* ')'
    cond      := (name ('.' name)* | '$this') ('=' | '!=') literal
    literal   := 'string' | number | true | false | @date-or-time (compared as text)

A name that is a choice element's base (``Observation.value``) matches whichever ``value[x]`` is present.
Element cardinality and choice types come from the ``fhir.resources`` R4B models when the type is known.
"""

from __future__ import annotations

import copy
import re
import typing
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from fhirserver.errors import BadRequest, Unprocessable
from fhirserver.resources.validation import unwrap_annotation

__all__ = ["apply_fhirpath_patch", "apply_json_patch"]


# ---------------------------------------------------------------------------------------------------------------
# JSON value equality (shared)
# ---------------------------------------------------------------------------------------------------------------

def _is_number(value: object) -> bool:
    """Whether ``value`` is a JSON number (bool is not)."""
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _as_decimal(value: int | float | Decimal) -> Decimal:
    """A number as Decimal; floats go through ``str`` so that 1.1 == Decimal('1.1')."""
    return Decimal(str(value)) if isinstance(value, float) else Decimal(value)


def _json_equal(a: object, b: object) -> bool:
    """JSON equality per RFC 6902 section 4.6: numbers by value, objects unordered, arrays ordered."""
    if _is_number(a) and _is_number(b):
        return _as_decimal(a) == _as_decimal(b)  # type: ignore[arg-type]
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None


# ---------------------------------------------------------------------------------------------------------------
# JSON Patch
# ---------------------------------------------------------------------------------------------------------------

_JSON_OPS = ("add", "remove", "replace", "move", "copy", "test")
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")


def _pointer_member(raw: dict, member: str, prefix: str) -> tuple[str, list[str]]:
    """A JSON Patch operation's `path` or `from`: the pointer and its tokens (400 when missing or malformed)."""
    pointer = raw.get(member)
    if not isinstance(pointer, str):
        raise BadRequest(f"{prefix}: '{member}' is missing or not a string")
    try:
        return pointer, _parse_pointer(pointer)
    except ValueError as exc:
        raise BadRequest(f"{prefix}: {exc}") from None


def _parse_pointer(pointer: str) -> list[str]:
    """Reference tokens of a JSON Pointer (RFC 6901); raises ValueError on bad syntax."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"JSON Pointer '{pointer}' must be empty or start with '/'")
    if _BAD_ESCAPE.search(pointer):
        raise ValueError(f"JSON Pointer '{pointer}' has a '~' not followed by '0' or '1'")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


@dataclass(frozen=True)
class _JsonOp:
    """One validated JSON Patch operation."""

    position: int
    op: str
    path: str
    tokens: list[str]
    value: Any = None
    source: str = ""
    source_tokens: list[str] = field(default_factory=list)

    def fail(self, detail: str) -> Unprocessable:
        """A 422 naming this operation."""
        return Unprocessable(f"JSON Patch operation {self.position} ('{self.op}'): {detail}")

    def missing(self, pointer: str) -> Unprocessable:
        """A 422 for a location that does not exist."""
        return self.fail(f"path '{pointer}' does not exist")


def _parse_json_patch(operations: object) -> list[_JsonOp]:
    """Validate the whole document before anything is applied; BadRequest on the first problem."""
    if not isinstance(operations, list):
        raise BadRequest("JSON Patch document must be a JSON array of operations")
    parsed: list[_JsonOp] = []
    for position, raw in enumerate(operations):
        if not isinstance(raw, dict):
            raise BadRequest(f"JSON Patch operation {position}: must be a JSON object")
        op = raw.get("op")
        if op not in _JSON_OPS:
            shown = f"'{op}'" if isinstance(op, str) else "missing" if op is None else "not a string"
            raise BadRequest(f"JSON Patch operation {position}: 'op' is {shown}; expected one of "
                             + ", ".join(_JSON_OPS))
        prefix = f"JSON Patch operation {position} ('{op}')"
        path, tokens = _pointer_member(raw, "path", prefix)
        source, source_tokens = "", []
        if op in ("add", "replace", "test") and "value" not in raw:
            raise BadRequest(f"{prefix}: 'value' is missing")
        if op in ("move", "copy"):
            source, source_tokens = _pointer_member(raw, "from", prefix)
            if op == "move" and len(tokens) > len(source_tokens) and tokens[:len(source_tokens)] == source_tokens:
                raise BadRequest(f"{prefix}: cannot move '{source}' into its own child '{path}'")
        parsed.append(_JsonOp(position, op, path, tokens, raw.get("value"), source, source_tokens))
    return parsed


def _array_index(token: str, length: int, op: _JsonOp, pointer: str, *, for_add: bool) -> int:
    """The list index a token denotes; '-' (append) and index == length are allowed only for add."""
    if token == "-" and for_add:
        return length
    if not _ARRAY_INDEX.fullmatch(token):
        raise op.fail(f"path '{pointer}': '{token}' is not a valid array index")
    index = int(token)
    if index > length or (index == length and not for_add):
        raise op.fail(f"path '{pointer}': array index {index} is out of range (array length {length})")
    return index


def _json_get(doc: Any, tokens: list[str], op: _JsonOp, pointer: str) -> Any:
    """The value at ``tokens``; 422 if any step is absent."""
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise op.missing(pointer)
            node = node[token]
        elif isinstance(node, list):
            if not _ARRAY_INDEX.fullmatch(token) or int(token) >= len(node):
                raise op.missing(pointer)
            node = node[int(token)]
        else:
            raise op.missing(pointer)
    return node


def _json_add(doc: Any, tokens: list[str], value: Any, op: _JsonOp, pointer: str) -> Any:
    """RFC 6902 add; returns the (possibly replaced) document."""
    if not tokens:
        return value
    parent = _json_get(doc, tokens[:-1], op, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(last, len(parent), op, pointer, for_add=True), value)
    else:
        raise op.missing(pointer)
    return doc


def _json_remove(doc: Any, tokens: list[str], op: _JsonOp, pointer: str) -> Any:
    """RFC 6902 remove; returns the removed value."""
    if not tokens:
        raise op.fail("cannot remove the whole resource")
    parent = _json_get(doc, tokens[:-1], op, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise op.missing(pointer)
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_array_index(last, len(parent), op, pointer, for_add=False))
    raise op.missing(pointer)


def _json_apply_one(doc: Any, op: _JsonOp) -> Any:
    """Apply one operation to ``doc`` in place where possible; returns the resulting document."""
    if op.op == "add":
        return _json_add(doc, op.tokens, copy.deepcopy(op.value), op, op.path)
    if op.op == "remove":
        _json_remove(doc, op.tokens, op, op.path)
        return doc
    if op.op == "replace":
        _json_get(doc, op.tokens, op, op.path)  # the target must exist
        if not op.tokens:
            return copy.deepcopy(op.value)
        parent = _json_get(doc, op.tokens[:-1], op, op.path)
        key: str | int = op.tokens[-1]
        if isinstance(parent, list):
            key = int(op.tokens[-1])
        parent[key] = copy.deepcopy(op.value)
        return doc
    if op.op == "move":
        if op.source_tokens == op.tokens:
            _json_get(doc, op.tokens, op, op.source)
            return doc
        value = _json_remove(doc, op.source_tokens, op, op.source)
        return _json_add(doc, op.tokens, value, op, op.path)
    if op.op == "copy":
        value = copy.deepcopy(_json_get(doc, op.source_tokens, op, op.source))
        return _json_add(doc, op.tokens, value, op, op.path)
    actual = _json_get(doc, op.tokens, op, op.path)  # test
    if not _json_equal(actual, op.value):
        raise op.fail(f"test failed: the value at '{op.path}' is not equal to the expected value")
    return doc


def apply_json_patch(resource: dict, operations: object) -> dict:
    """Apply an RFC 6902 JSON Patch document to a copy of ``resource`` and return the copy.

    Raises BadRequest for a malformed document and Unprocessable when an operation cannot be applied,
    a ``test`` fails, or the result is not an object with the original ``resourceType``.
    """
    if not isinstance(resource, dict):
        raise TypeError("resource must be a dict")
    ops = _parse_json_patch(operations)
    resource_type = resource.get("resourceType")
    doc: Any = copy.deepcopy(resource)
    for op in ops:
        doc = _json_apply_one(doc, op)
        if not isinstance(doc, dict):
            raise op.fail("the result must remain a JSON object")
        if doc.get("resourceType") != resource_type:
            raise op.fail("a patch must not change resourceType")
    return doc


# ---------------------------------------------------------------------------------------------------------------
# FHIR type information (fhir.resources R4B models, best effort)
# ---------------------------------------------------------------------------------------------------------------

# Used when the element's type is unknown: these names repeat on every type that has them.
_ALWAYS_REPEATING = frozenset({"extension", "modifierExtension", "contained", "coding", "identifier", "telecom"})


@cache
def _model(type_name: str) -> type | None:
    """The fhir.resources R4B model class of a resource or datatype name, or None."""
    try:
        from fhir.resources.R4B import get_fhir_model_class
        return get_fhir_model_class(type_name)
    except Exception:  # unknown name or models unavailable: fall back to untyped navigation
        return None


@cache
def _fields(cls: type) -> dict[str, tuple[bool, type | None, str | None]]:
    """JSON name -> (repeating, element model or None, choice group or None) for a model class."""
    out: dict[str, tuple[bool, type | None, str | None]] = {}
    for name, info in getattr(cls, "model_fields", {}).items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name.endswith("__ext") or not extra.get("element_property"):
            continue
        repeating, element = _unwrap(info.annotation)
        group = extra.get("one_of_many")
        out[info.alias or name] = (repeating, element, group if isinstance(group, str) else None)
    return out


def _unwrap(annotation: Any) -> tuple[bool, type | None]:
    """(is a list, model class of the items or None for primitives) from a pydantic annotation."""
    current, repeating = unwrap_annotation(annotation)
    if typing.get_origin(current) is typing.Annotated:  # a primitive with its FHIR type marker
        current = typing.get_args(current)[0]
    name = getattr(current, "__name__", "")
    if getattr(current, "__module__", "") == "abc" and name.endswith("Type"):
        return repeating, _model(name[:-4])
    return repeating, None


def _type_of(value: object, declared: type | None) -> type | None:
    """The model for a value: a resource's own resourceType wins over the declared type."""
    if isinstance(value, dict) and isinstance(value.get("resourceType"), str):
        return _model(value["resourceType"]) or declared
    return declared


def _element_key(cls: type | None, name: str, type_suffix: str | None) -> tuple[str, bool, type | None]:
    """JSON key, repeating flag and element model for child ``name`` (a choice base takes the value's type)."""
    if cls is not None:
        fields = _fields(cls)
        if name in fields:
            repeating, element, _ = fields[name]
            return name, repeating, element
        if type_suffix and name + type_suffix in fields:
            repeating, element, _ = fields[name + type_suffix]
            return name + type_suffix, repeating, element
        return name, False, None
    return name, name in _ALWAYS_REPEATING, None


def _choice_group(cls: type | None, key: str) -> str | None:
    """The choice base (``value``) of a key such as ``valueQuantity`` when the model says it is one."""
    if cls is None:
        return None
    entry = _fields(cls).get(key)
    return entry[2] if entry else None


def _choice_keys(node: dict, name: str, cls: type | None) -> list[str]:
    """Keys of ``node`` that are ``name[x]`` variants of a choice element."""
    if cls is not None:
        fields = _fields(cls)
        if any(group == name for _, _, group in fields.values()):
            return [k for k in node if k in fields and fields[k][2] == name]
        return []
    n = len(name)
    return [k for k in node if len(k) > n and k.startswith(name) and k[n].isupper()]


# ---------------------------------------------------------------------------------------------------------------
# FHIRPath subset: parser
# ---------------------------------------------------------------------------------------------------------------

class _Unsupported(ValueError):
    """An expression outside the supported FHIRPath subset."""


_TOKEN = re.compile(r"""\s*(?:
      (?P<string>'(?:[^'\\]|\\.)*')
    | (?P<date>@[0-9][0-9T:.+\-Z]*)
    | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)
    | (?P<this>\$this)
    | (?P<sym>!=|[.\[\]()=])
    )""", re.VERBOSE)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(body: str) -> str:
    """Decode FHIRPath string escapes (``\\'``, ``\\n``, ``\\uXXXX`` ...)."""
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2:i + 6]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise _Unsupported(f"invalid escape '\\{nxt}' in a string literal")
    return "".join(out)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of an expression."""
    tokens, pos = [], 0
    while True:
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
        if pos == len(expr):
            return tokens
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise _Unsupported(f"unexpected character {expr[pos]!r} at position {pos}")
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()


@dataclass(frozen=True)
class _Cond:
    """``path op literal`` inside where(); an empty path means ``$this``."""

    path: tuple[str, ...]
    negate: bool
    kind: str  # string | number | boolean | date
    literal: Any


@dataclass(frozen=True)
class _Step:
    """One navigation step: child name, [n], first(), last() or where(...)."""

    kind: str
    name: str = ""
    index: int = 0
    conds: tuple[_Cond, ...] = ()


_KIND_NAMES = {"ident": "an element name", "number": "an index"}


class _Parser:
    """Recursive-descent parser for the supported subset."""

    def __init__(self, expr: str) -> None:
        self.tokens = _tokenize(expr)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        """The token ``offset`` ahead, or ('end', '')."""
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        """Consume a token of ``kind`` (and ``text``), or fail."""
        tok_kind, tok_text = self.peek()
        if tok_kind != kind or (text is not None and tok_text != text):
            wanted = f"'{text}'" if text else _KIND_NAMES.get(kind, kind)
            found = f"'{tok_text}'" if tok_text else "the end"
            raise _Unsupported(f"expected {wanted} but found {found}")
        self.pos += 1
        return tok_text

    def ident(self) -> str:
        """An identifier, backticks removed."""
        text = self.take("ident")
        return text[1:-1] if text.startswith("`") else text

    def parse(self) -> list[_Step]:
        """The whole expression."""
        if not self.tokens:
            raise _Unsupported("the expression is empty")
        steps = [_Step("child", self.ident())]
        while self.peek()[0] != "end":
            if self.peek() == ("sym", "["):
                self.pos += 1
                number = self.take("number")
                if not number.isdigit():
                    raise _Unsupported(f"index '{number}' must be a non-negative integer")
                self.take("sym", "]")
                steps.append(_Step("index", index=int(number)))
                continue
            self.take("sym", ".")
            name = self.ident()
            if self.peek() != ("sym", "("):
                steps.append(_Step("child", name))
                continue
            self.pos += 1
            if name in ("first", "last"):
                self.take("sym", ")")
                steps.append(_Step(name))
            elif name == "where":
                conds = [self.cond()]
                while self.peek() == ("ident", "and"):
                    self.pos += 1
                    conds.append(self.cond())
                if self.peek()[0] == "ident":
                    raise _Unsupported(f"'{self.peek()[1]}' is not supported in where(); only 'and' joins conditions")
                self.take("sym", ")")
                steps.append(_Step("where", conds=tuple(conds)))
            else:
                raise _Unsupported(f"function '{name}()' is not supported (only first(), last() and where())")
        return steps

    def cond(self) -> _Cond:
        """``child.path = literal`` or ``$this != literal``."""
        if self.peek()[0] == "this":
            self.pos += 1
            path: tuple[str, ...] = ()
        else:
            names = [self.ident()]
            while self.peek() == ("sym", "."):
                self.pos += 1
                names.append(self.ident())
            path = tuple(names)
        kind, text = self.peek()
        if (kind, text) not in (("sym", "="), ("sym", "!=")):
            raise _Unsupported("where() conditions must have the form <element> = <literal>, joined by 'and'")
        self.pos += 1
        return _Cond(path, text == "!=", *self.literal())

    def literal(self) -> tuple[str, Any]:
        """A string, number, boolean or date/time literal."""
        kind, text = self.peek()
        self.pos += 1
        if kind == "string":
            return "string", _unescape(text[1:-1])
        if kind == "number":
            return "number", Decimal(text)
        if kind == "date":
            return "date", text[1:]
        if kind == "ident" and text in ("true", "false"):
            return "boolean", text == "true"
        self.pos -= 1
        raise _Unsupported(f"expected a literal but found '{text}'" if text else "expected a literal")


def _parse_fhirpath(expr: str) -> list[_Step]:
    """Parse ``expr``; raises _Unsupported."""
    return _Parser(expr).parse()


# ---------------------------------------------------------------------------------------------------------------
# FHIRPath subset: locations
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class _Loc:
    """Where an item lives: ``holder[key]`` or ``holder[key][index]``; the root has no holder."""

    holder: dict | None
    key: str
    index: int | None
    parent: _Loc | None
    type_cls: type | None
    node: dict | None = None  # the root resource itself
    choice_base: str | None = None  # set when a choice base name (``value``) matched ``valueQuantity``

    @property
    def value(self) -> Any:
        """The item at this location."""
        if self.holder is None:
            return self.node
        item = self.holder[self.key]
        return item if self.index is None else item[self.index]


def _children(loc: _Loc, name: str) -> list[_Loc]:
    """Locations of child ``name`` of the item at ``loc`` (list elements flattened, choice names expanded)."""
    node = loc.value
    if not isinstance(node, dict) or name == "resourceType":
        return []
    keys, base = ([name], None) if name in node else (_choice_keys(node, name, loc.type_cls), name)
    found: list[_Loc] = []
    for key in keys:
        _, _, declared = _element_key(loc.type_cls, key, None)
        item = node[key]
        if isinstance(item, list):
            found.extend(_Loc(node, key, i, loc, _type_of(v, declared), choice_base=base) for i, v in enumerate(item))
        else:
            found.append(_Loc(node, key, None, loc, _type_of(item, declared), choice_base=base))
    return found


def _literal_equal(value: object, kind: str, literal: Any) -> bool:
    """FHIRPath ``=`` between one item and a literal (no implicit string/number conversion)."""
    if kind == "number":
        return _is_number(value) and _as_decimal(value) == literal  # type: ignore[arg-type]
    if kind == "boolean":
        return isinstance(value, bool) and value == literal
    return isinstance(value, str) and value == literal


def _cond_holds(loc: _Loc, cond: _Cond) -> bool:
    """Evaluate a where() condition with FHIRPath collection semantics (empty or many items: not equal)."""
    current = [loc]
    for name in cond.path:
        current = [child for item in current for child in _children(item, name)]
    if not current:
        return False
    equal = len(current) == 1 and _literal_equal(current[0].value, cond.kind, cond.literal)
    return not equal if cond.negate else equal


class _TypeMismatch(Exception):
    """The path names a resource type other than the patched one."""


def _resolve(steps: list[_Step], root: _Loc) -> list[_Loc]:
    """Evaluate parsed steps from the root; returns the matching locations in document order."""
    resource_type = root.value.get("resourceType")
    current = [root]
    for position, step in enumerate(steps):
        if step.kind == "child":
            if position == 0 and step.name[:1].isupper():
                if step.name not in (resource_type, "Resource", "DomainResource"):
                    raise _TypeMismatch(step.name)
                continue
            current = [child for loc in current for child in _children(loc, step.name)]
        elif step.kind == "index":
            current = current[step.index:step.index + 1]
        elif step.kind == "first":
            current = current[:1]
        elif step.kind == "last":
            current = current[-1:]
        else:
            current = [loc for loc in current if all(_cond_holds(loc, c) for c in step.conds)]
    return current


# ---------------------------------------------------------------------------------------------------------------
# FHIRPath Patch: the Parameters document
# ---------------------------------------------------------------------------------------------------------------

_FP_TYPES = ("add", "insert", "delete", "replace", "move")
_FP_PARTS = ("type", "path", "name", "value", "index", "source", "destination")
_FP_REQUIRED = {
    "add": ("path", "name", "value"),
    "insert": ("path", "value", "index"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}


@dataclass(frozen=True)
class _Value:
    """A patch value: a typed value[x] (``suffix`` = ``String``, ``Quantity`` ...) or nested named parts."""

    suffix: str | None = None
    data: Any = None
    parts: tuple[tuple[str, _Value], ...] | None = None


@dataclass(frozen=True)
class _FhirPathOp:
    """One validated FHIRPath Patch operation."""

    position: int
    type: str
    path: str
    steps: list[_Step]
    name: str = ""
    value: _Value | None = None
    index: int = 0
    source: int = 0
    destination: int = 0

    def fail(self, detail: str) -> Unprocessable:
        """A 422 naming this operation."""
        return Unprocessable(f"FHIRPath Patch operation {self.position} ('{self.type}'): {detail}",
                             expression=[f"Parameters.parameter[{self.position}]"])


def _bad(position: int, op_type: str | None, detail: str) -> BadRequest:
    """A 400 naming operation ``position``."""
    label = f"FHIRPath Patch operation {position}" + (f" ('{op_type}')" if op_type else "")
    return BadRequest(f"{label}: {detail}", expression=[f"Parameters.parameter[{position}]"])


def _value_keys(part: dict) -> list[str]:
    """The value[x] keys present in a Parameters part."""
    return [k for k in part if k.startswith("value") and len(k) > 5 and k[5].isupper()]


def _parse_value(part: dict, where: str) -> _Value:
    """A ``value`` part (or a nested part) as a _Value; raises ValueError describing the problem."""
    value_keys = _value_keys(part)
    forms = len(value_keys) + ("part" in part) + ("resource" in part)
    if forms != 1:
        raise ValueError(f"{where} must have exactly one of value[x], part or resource")
    if value_keys:
        return _Value(suffix=value_keys[0][5:], data=part[value_keys[0]])
    if "resource" in part:
        if not isinstance(part["resource"], dict):
            raise ValueError(f"{where}.resource must be a resource object")
        return _Value(data=part["resource"])
    nested = part["part"]
    if not isinstance(nested, list) or not nested:
        raise ValueError(f"{where}.part must be a non-empty list")
    children = []
    for i, child in enumerate(nested):
        label = f"{where}.part[{i}]"
        if not isinstance(child, dict) or not isinstance(child.get("name"), str) or not child["name"]:
            raise ValueError(f"{label} must be an object with a 'name'")
        children.append((child["name"], _parse_value(child, label)))
    return _Value(parts=tuple(children))


def _part_string(part: dict) -> str | None:
    """A part's string value (valueString or valueCode)."""
    for key in ("valueString", "valueCode"):
        if isinstance(part.get(key), str):
            return part[key]
    return None


def _parse_operation(position: int, param: object) -> _FhirPathOp:
    """Validate one ``operation`` parameter."""
    if not isinstance(param, dict) or param.get("name") != "operation":
        raise _bad(position, None, "each parameter must be named 'operation'")
    parts = param.get("part")
    if not isinstance(parts, list):
        raise _bad(position, None, "the operation has no 'part' list")
    by_name: dict[str, dict] = {}
    for i, part in enumerate(parts):
        name = part.get("name") if isinstance(part, dict) else None
        if name not in _FP_PARTS:
            raise _bad(position, None, f"part {i} has unknown name {name!r}; expected one of " + ", ".join(_FP_PARTS))
        if name in by_name:
            raise _bad(position, None, f"part '{name}' is repeated")
        by_name[name] = part
    op_type = _part_string(by_name["type"]) if "type" in by_name else None
    if op_type is None:
        raise _bad(position, None, "the 'type' part (valueCode) is missing")
    if op_type not in _FP_TYPES:
        raise _bad(position, None, f"unknown type '{op_type}'; expected one of " + ", ".join(_FP_TYPES))
    for required in _FP_REQUIRED[op_type]:
        if required not in by_name:
            raise _bad(position, op_type, f"the '{required}' part is missing")
    path = _part_string(by_name["path"])
    if not path:
        raise _bad(position, op_type, "the 'path' part must have a non-empty valueString")
    try:
        steps = _parse_fhirpath(path)
    except _Unsupported as exc:
        raise _bad(position, op_type, f"unsupported FHIRPath expression '{path}': {exc}") from None
    names_type_only = len(steps) == 1 and steps[0].name[:1].isupper()
    if op_type in ("insert", "move") and (steps[-1].kind != "child" or names_type_only):
        raise _bad(position, op_type, f"path '{path}' must end with the name of a list element")
    name = ""
    if op_type == "add":
        name = _part_string(by_name["name"]) or ""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise _bad(position, op_type, "the 'name' part must have a valueString that is an element name")
    value = None
    if "value" in by_name and op_type in ("add", "insert", "replace"):
        try:
            value = _parse_value(by_name["value"], "the 'value' part")
        except ValueError as exc:
            raise _bad(position, op_type, str(exc)) from None
    numbers: dict[str, int] = {}
    for key in ("index", "source", "destination"):
        if key in _FP_REQUIRED[op_type]:
            number = by_name[key].get("valueInteger")
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise _bad(position, op_type, f"the '{key}' part must have a non-negative valueInteger")
            numbers[key] = number
    return _FhirPathOp(position, op_type, path, steps, name, value, **numbers)


def _parse_parameters(parameters: object) -> list[_FhirPathOp]:
    """Validate the whole Parameters resource before anything is applied."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise BadRequest("a FHIRPath Patch document must be a Parameters resource")
    params = parameters.get("parameter", [])
    if not isinstance(params, list):
        raise BadRequest("Parameters.parameter must be a list")
    return [_parse_operation(i, p) for i, p in enumerate(params)]


# ---------------------------------------------------------------------------------------------------------------
# FHIRPath Patch: applying
# ---------------------------------------------------------------------------------------------------------------

def _build(value: _Value, cls: type | None) -> Any:
    """Materialize a _Value; nested parts become an element whose repeating children are lists."""
    if value.parts is None:
        return copy.deepcopy(value.data)
    grouped: dict[str, list[_Value]] = {}
    for name, child in value.parts:
        grouped.setdefault(name, []).append(child)
    out: dict[str, Any] = {}
    for name, children in grouped.items():
        key, repeating, element = _element_key(cls, name, children[0].suffix)
        items = [_build(child, _type_of(child.data, element)) for child in children]
        out[key] = items if repeating or len(items) > 1 else items[0]
    return out


def _companion(holder: dict, key: str, length: int) -> list | None:
    """The ``_key`` list carrying ids/extensions of primitive list items, when aligned with ``holder[key]``."""
    extra = holder.get("_" + key)
    return extra if isinstance(extra, list) and len(extra) == length else None


def _remove(loc: _Loc) -> None:
    """Delete the item at ``loc``; an emptied list or object is removed from its own parent too."""
    holder = loc.holder
    if holder is None:
        return
    if loc.index is None:
        del holder[loc.key]
        holder.pop("_" + loc.key, None)
    else:
        items = holder[loc.key]
        extra = _companion(holder, loc.key, len(items))
        del items[loc.index]
        if extra is not None:
            del extra[loc.index]
            if all(e is None for e in extra):
                del holder["_" + loc.key]
        if not items:
            del holder[loc.key]
            holder.pop("_" + loc.key, None)
    if not holder and loc.parent is not None:
        _remove(loc.parent)


def _only(op: _FhirPathOp, locs: list[_Loc], what: str) -> _Loc:
    """The single location ``op`` needs; 422 for none or several."""
    if len(locs) != 1:
        raise op.fail(f"path '{op.path}' matched {len(locs)} elements; {what} needs exactly one")
    return locs[0]


def _list_target(op: _FhirPathOp, root: _Loc) -> tuple[dict, str, list | None, type | None]:
    """(holder, key, current list or None, item model) of the collection that insert/move address."""
    holder_loc = _only(op, _resolve(op.steps[:-1], root), op.type) if len(op.steps) > 1 else root
    holder = holder_loc.value
    if not isinstance(holder, dict):
        raise op.fail(f"path '{op.path}' does not address a list element")
    key = op.steps[-1].name
    _, repeating, element = _element_key(holder_loc.type_cls, key, None)
    current = holder.get(key)
    if current is not None and not isinstance(current, list):
        raise op.fail(f"path '{op.path}' is a single-valued element, not a list")
    if current is None and holder_loc.type_cls is not None and not repeating:
        raise op.fail(f"path '{op.path}' is not a repeating element")
    return holder, key, current, element


def _apply_add(op: _FhirPathOp, root: _Loc) -> None:
    """add: ``name`` becomes a child of the single element at ``path`` (appended if it repeats)."""
    loc = _only(op, _resolve(op.steps, root), "add")
    target = loc.value
    if not isinstance(target, dict):
        raise op.fail(f"path '{op.path}' is a primitive value; it cannot have the child '{op.name}'")
    assert op.value is not None
    key, repeating, element = _element_key(loc.type_cls, op.name, op.value.suffix)
    value = _build(op.value, _type_of(op.value.data, element))
    group = _choice_group(loc.type_cls, key)
    if group and any(k != key and _choice_group(loc.type_cls, k) == group for k in target):
        raise op.fail(f"'{group}[x]' already has a value; use replace")
    if key not in target:
        target[key] = [value] if repeating else value
        return
    existing = target[key]
    if not isinstance(existing, list):
        raise op.fail(f"'{key}' already has a value and does not repeat; use replace")
    extra = _companion(target, key, len(existing))
    existing.append(value)
    if extra is not None:
        extra.append(None)


def _apply_insert(op: _FhirPathOp, root: _Loc) -> None:
    """insert: put ``value`` into the list at ``path`` at position ``index`` (0..length)."""
    holder, key, current, element = _list_target(op, root)
    length = len(current) if current else 0
    if op.index > length:
        raise op.fail(f"index {op.index} is out of range; the list '{op.path}' has {length} items")
    assert op.value is not None
    value = _build(op.value, _type_of(op.value.data, element))
    if current is None:
        holder[key] = [value]
        return
    extra = _companion(holder, key, length)
    current.insert(op.index, value)
    if extra is not None:
        extra.insert(op.index, None)


def _apply_move(op: _FhirPathOp, root: _Loc) -> None:
    """move: within the list at ``path``, move the item at ``source`` to ``destination``."""
    holder, key, current, _ = _list_target(op, root)
    length = len(current) if current else 0
    for label, number in (("source", op.source), ("destination", op.destination)):
        if number >= length:
            raise op.fail(f"{label} {number} is out of range; the list '{op.path}' has {length} items")
    assert current is not None
    extra = _companion(holder, key, length)
    current.insert(op.destination, current.pop(op.source))
    if extra is not None:
        extra.insert(op.destination, extra.pop(op.source))


def _apply_replace(op: _FhirPathOp, root: _Loc) -> None:
    """replace: the single element at ``path`` gets ``value`` (a choice element may change its type)."""
    loc = _only(op, _resolve(op.steps, root), "replace")
    if loc.holder is None:
        raise op.fail("cannot replace the resource itself")
    assert op.value is not None
    value = _build(op.value, loc.type_cls if op.value.parts is not None else None)
    holder, key = loc.holder, loc.key
    if loc.index is not None:
        holder[key][loc.index] = value
        return
    new_key = loc.choice_base + op.value.suffix if loc.choice_base and op.value.suffix else key
    if new_key != key:
        del holder[key]
        holder.pop("_" + key, None)
    holder[new_key] = value


def _apply_delete(op: _FhirPathOp, root: _Loc) -> None:
    """delete: no-op for no match, removes a single match, 422 for several."""
    locs = _resolve(op.steps, root)
    if not locs:
        return
    loc = _only(op, locs, "delete")
    if loc.holder is None:
        raise op.fail("cannot delete the resource itself")
    _remove(loc)


_APPLY = {"add": _apply_add, "insert": _apply_insert, "delete": _apply_delete,
          "replace": _apply_replace, "move": _apply_move}


def apply_fhirpath_patch(resource: dict, parameters: object) -> dict:
    """Apply a FHIRPath Patch (a Parameters resource) to a copy of ``resource`` and return the copy.

    Raises BadRequest for a malformed Parameters document or an unsupported expression, and
    Unprocessable when an operation does not apply to this resource.
    """
    if not isinstance(resource, dict):
        raise TypeError("resource must be a dict")
    ops = _parse_parameters(parameters)
    doc = copy.deepcopy(resource)
    resource_type = doc.get("resourceType")
    root_type = _model(resource_type) if isinstance(resource_type, str) else None
    for op in ops:
        root = _Loc(None, "", None, None, root_type, node=doc)
        try:
            _APPLY[op.type](op, root)
        except _TypeMismatch as exc:
            raise op.fail(f"path '{op.path}' starts with '{exc}' but the resource is a {resource_type}") from None
        if doc.get("resourceType") != resource_type:
            raise op.fail("a patch must not change resourceType")
    return doc
