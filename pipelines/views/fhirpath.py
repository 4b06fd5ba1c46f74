"""A parser for the FHIRPath subset used by SQL-on-FHIR ViewDefinitions, producing a small AST."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ViewDefinitionError


@dataclass(frozen=True)
class Literal:
    kind: str  # string, integer, decimal, boolean, date, dateTime, time, empty
    value: object


@dataclass(frozen=True)
class Ident:
    name: str


@dataclass(frozen=True)
class This:
    pass


@dataclass(frozen=True)
class Const:
    name: str


@dataclass(frozen=True)
class Member:
    target: object
    name: str


@dataclass(frozen=True)
class Call:
    target: object | None  # None: invoked on $this
    name: str
    args: tuple[object, ...]


@dataclass(frozen=True)
class Index:
    target: object
    index: object


@dataclass(frozen=True)
class Unary:
    op: str
    operand: object


@dataclass(frozen=True)
class Binary:
    op: str
    left: object
    right: object


@dataclass(frozen=True)
class TypeOp:
    op: str  # is, as
    operand: object
    type_name: str


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<datetime>@T?[0-9][0-9:.\-T+Z]*)
  | (?P<number>[0-9]+(?:\.[0-9]+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<quoted>`(?:[^`\\]|\\.)*`)
  | (?P<special>\$this|\$index|\$total)
  | (?P<const>%(?:[A-Za-z_][A-Za-z0-9_]*|'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|!~|[-+*/&|=~<>.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}

# Binary operator precedence, loosest first (FHIRPath §Operator precedence).
_BINARY = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}
_KEYWORD_OPS = {"implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod"}


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise ViewDefinitionError(f"invalid escape sequence in FHIRPath string: \\{nxt}")
    return "".join(out)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ViewDefinitionError(f"invalid FHIRPath at offset {pos}: {text!r}")
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, match.group()))
        pos = match.end()
    tokens.append(("eof", ""))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos]

    def take(self) -> tuple[str, str]:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if got != value or kind not in ("op", "ident"):
            raise ViewDefinitionError(f"expected {value!r} in FHIRPath {self.text!r}, found {got or 'end'!r}")

    def fail(self, what: str) -> ViewDefinitionError:
        return ViewDefinitionError(f"{what} in FHIRPath {self.text!r}")

    def parse(self) -> object:
        node = self.expression(0)
        if self.peek()[0] != "eof":
            raise self.fail(f"unexpected {self.peek()[1]!r}")
        return node

    def binary_op(self) -> str | None:
        kind, value = self.peek()
        if (kind == "op" and value in _BINARY) or (kind == "ident" and value in _KEYWORD_OPS):
            return value
        return None

    def expression(self, min_prec: int) -> object:
        left = self.unary()
        while True:
            op = self.binary_op()
            if op is None or _BINARY[op] < min_prec:
                return left
            self.take()
            if op in ("is", "as"):
                left = TypeOp(op, left, self.type_specifier())
            else:
                left = Binary(op, left, self.expression(_BINARY[op] + 1))

    def unary(self) -> object:
        kind, value = self.peek()
        if kind == "op" and value in ("+", "-"):
            self.take()
            return Unary(value, self.unary())
        return self.postfix(self.term())

    def type_specifier(self) -> str:
        parts = [self.identifier()]
        while self.peek() == ("op", "."):
            self.take()
            parts.append(self.identifier())
        return ".".join(parts)

    def identifier(self) -> str:
        kind, value = self.take()
        if kind == "ident":
            return value
        if kind == "quoted":
            return _unescape(value[1:-1])
        raise self.fail(f"expected an identifier, found {value or 'end'!r}")

    def arguments(self) -> tuple[object, ...]:
        self.expect("(")
        args: list[object] = []
        if self.peek() != ("op", ")"):
            args.append(self.expression(0))
            while self.peek() == ("op", ","):
                self.take()
                args.append(self.expression(0))
        self.expect(")")
        return tuple(args)

    def postfix(self, node: object) -> object:
        while True:
            token = self.peek()
            if token == ("op", "."):
                self.take()
                name = self.identifier()
                if self.peek() == ("op", "("):
                    node = Call(node, name, self.arguments())
                else:
                    node = Member(node, name)
            elif token == ("op", "["):
                self.take()
                index = self.expression(0)
                self.expect("]")
                node = Index(node, index)
            else:
                return node

    def term(self) -> object:
        kind, value = self.peek()
        if kind == "op" and value == "(":
            self.take()
            inner = self.expression(0)
            self.expect(")")
            return inner
        if kind == "op" and value == "{":
            self.take()
            self.expect("}")
            return Literal("empty", None)
        self.take()
        if kind == "string":
            return Literal("string", _unescape(value[1:-1]))
        if kind == "number":
            return Literal("decimal", value) if "." in value else Literal("integer", int(value))
        if kind == "datetime":
            return _temporal(value, self)
        if kind == "special":
            if value == "$this":
                return This()
            raise self.fail(f"{value} is not supported")
        if kind == "const":
            body = value[1:]
            return Const(_unescape(body[1:-1]) if body[:1] in ("'", "`") else body)
        if kind in ("ident", "quoted"):
            name = value if kind == "ident" else _unescape(value[1:-1])
            if kind == "ident" and name in ("true", "false"):
                return Literal("boolean", name == "true")
            if self.peek() == ("op", "("):
                return Call(None, name, self.arguments())
            return Ident(name)
        raise self.fail(f"unexpected {value or 'end'!r}")


_DATE = r"[0-9]{4}(?:-[0-9]{2}(?:-[0-9]{2})?)?"
_TIME = r"[0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
_TZ = r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"


def _temporal(token: str, parser: _Parser) -> Literal:
    body = token[1:]
    if body.startswith("T") and re.fullmatch(_TIME, body[1:]):
        return Literal("time", body[1:])
    if re.fullmatch(_DATE, body):
        return Literal("date", body)
    if re.fullmatch(f"{_DATE}T(?:{_TIME})?{_TZ}", body):
        return Literal("dateTime", body.rstrip("T"))
    raise parser.fail(f"invalid date/time literal {token!r}")


def parse(text: object) -> object:
    """Parse a FHIRPath expression, raising ViewDefinitionError for anything outside the subset."""
    if not isinstance(text, str) or not text.strip():
        raise ViewDefinitionError(f"a FHIRPath expression must be a non-empty string, not {text!r}")
    return _Parser(text).parse()
