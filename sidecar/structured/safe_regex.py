"""A small, proven-safe regular-expression subset, re-written for grammar converters.

llama.cpp's JSON-Schema-to-GBNF converters (llama-cpp-python's ``llama_grammar.py``
and the C++ ``json-schema-to-grammar.cpp`` inside llama.cpp and Ollama) copy regex
escapes such as ``\\.``, ``\\d``, ``\\w`` or ``\\/`` straight into the GBNF text, whose
parser knows only ``\\x \\u \\U \\t \\r \\n \\\\ \\" \\[ \\] \\-`` and fails on any other
escape ("unknown escape"); llama-cpp-python's server then dies. They also wrap the
pattern in the JSON string's quotes without JSON-escaping it, so a pattern that can
match ``"``, ``\\`` or a control character lets the model write invalid JSON.

:func:`parse` accepts only: literal characters, escaped punctuation, ``\\d \\w \\s \\D
\\W \\S``, ``.``, character classes (negated too), groups ``(...)``/``(?:...)``,
``\\xHH``, alternation, the quantifiers ``* + ? {n} {n,} {n,m} {,m}`` (lazy forms too), and ``^``
``$`` only at the very start and end. Look-around and ``\\b``/``\\B`` are zero-width:
they are left out and the result says so (the grammar then accepts more than the
pattern). Anything else (back-references, inline flags, named groups, ``\\u`` escapes,
unicode) is refused: the caller drops the pattern and leaves it to local validation.

:func:`to_grammar_pattern` re-emits a parsed pattern in the one form those converters
translate faithfully: alphanumerics bare, every other character inside a class spelled
``\\xHH``, each class reduced to printable ASCII without ``"`` and ``\\`` (negated
classes and ``.`` become positive classes over that alphabet), always anchored, with a
top-level alternation grouped. Every string the re-written pattern fully matches is
matched by the original (``re.search``): the grammar may be narrower, never wider,
except where ``loosened`` says so (assertions left out, bounds above :data:`MAX_REPEAT`
made unbounded).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_PATTERN_LENGTH", "MAX_REPEAT", "Pattern", "lower_pattern", "parse", "to_grammar_pattern"]

MAX_PATTERN_LENGTH = 512
#: Repetition bounds up to this are kept; larger upper bounds become unbounded and a
#: larger lower bound refuses the pattern (the converter unrolls every bound).
MAX_REPEAT = 64

#: The characters a pattern may produce inside a JSON string without escaping:
#: printable ASCII without ``"`` and ``\``.
ALPHABET = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}
_DIGITS = frozenset("0123456789")
_WORD = _DIGITS | frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_SPACE = frozenset(" ")  # \s narrowed to the one whitespace a JSON string holds unescaped
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACE,
                  "D": ALPHABET - _DIGITS, "W": ALPHABET - _WORD, "S": ALPHABET - _SPACE}
_SPECIAL = frozenset("\\^$.|?*+()[]{}")


class Unsupported(Exception):
    """The pattern uses something outside the safe subset."""


@dataclass(frozen=True, slots=True)
class Chars:
    chars: frozenset[str]


@dataclass(frozen=True, slots=True)
class Group:
    alternatives: tuple[tuple[Item, ...], ...]


@dataclass(frozen=True, slots=True)
class Item:
    atom: Chars | Group
    low: int = 1
    high: int | None = 1


@dataclass(frozen=True, slots=True)
class Pattern:
    body: Group
    anchored_start: bool
    anchored_end: bool
    loosened: tuple[str, ...] = ()  # what was left out: the grammar may accept more


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.loosened: list[str] = []

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise Unsupported("unexpected end")
        self.pos += 1
        return char

    def alternatives(self, depth: int) -> Group:
        if depth > 16:
            raise Unsupported("groups nested too deeply")
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return Group(tuple(branches))

    def sequence(self, depth: int) -> tuple[Item, ...]:
        items: list[Item] = []
        while self.peek() and self.peek() not in "|)":
            if self.peek() == "$" and self.pos == len(self.text) - 1:
                break
            atom = self.atom(depth)
            if atom is not None:
                items.append(self.quantified(atom))
            elif self.peek() in ("*", "+", "?", "{"):
                raise Unsupported("quantified assertion")
        if not items:
            raise Unsupported("empty alternative")
        return tuple(items)

    def atom(self, depth: int) -> Chars | Group | None:
        """The next atom; None for a zero-width assertion, which is left out (loosened)."""
        char = self.take()
        if char == "(":
            marker = self.text[self.pos : self.pos + 3]
            look = marker[:2] in ("?=", "?!") or marker in ("?<=", "?<!")
            if self.peek() == "?" and not look and marker[:2] != "?:":
                raise Unsupported("named group or inline flag")
            self.pos += 0 if self.peek() != "?" else (2 if marker[:2] in ("?=", "?!", "?:") else 3)
            group = self.alternatives(depth + 1)
            if self.take() != ")":
                raise Unsupported("unbalanced group")
            if look:
                self.loosened.append("look-around")
                return None
            return group
        if char == "[":
            return self.char_class()
        if char == ".":
            return Chars(ALPHABET)
        if char == "\\":
            if self.peek() in ("b", "B"):
                self.pos += 1
                self.loosened.append("word boundary")
                return None
            return self.escape()
        if char in _SPECIAL:
            raise Unsupported(f"{char!r} where a character was expected")
        return _literal(char)

    def escape(self) -> Chars:
        char = self.take()
        if char in _CLASS_ESCAPES:
            return Chars(_CLASS_ESCAPES[char])
        return _literal(self.escaped_char(char))

    def escaped_char(self, char: str) -> str:
        """The character ``\\char`` stands for: punctuation, or ``\\xHH``."""
        if char == "x":
            digits = self.text[self.pos : self.pos + 2]
            if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise Unsupported("malformed \\x escape")
            self.pos += 2
            return chr(int(digits, 16))
        if char.isalnum() or char == "\\":
            raise Unsupported(f"escape \\{char}")
        return char

    def char_class(self) -> Chars:
        negated = self.peek() == "^"
        self.pos += negated
        chars: set[str] = set()
        first = True
        while first or self.peek() != "]":
            first = False
            chars |= self.class_member()
        self.pos += 1
        picked = (ALPHABET - chars) if negated else (chars & ALPHABET)
        if not picked:
            raise Unsupported("class matches nothing the grammar can emit")
        return Chars(frozenset(picked))

    def class_member(self) -> frozenset[str]:
        char = self.take()
        if char == "[":
            raise Unsupported("nested class or POSIX class")
        if char == "\\":
            escaped = self.take()
            if escaped in _CLASS_ESCAPES:
                return _CLASS_ESCAPES[escaped]
            char = self.escaped_char(escaped)
        if self.peek() == "-" and self.peek(1) not in ("]", ""):
            self.pos += 1
            end = self.take()
            if end == "\\":
                end = self.escaped_char(self.take())
            elif end == "[":
                raise Unsupported("'[' in a class")
            if ord(end) < ord(char):
                raise Unsupported("inverted range")
            return frozenset(chr(c) for c in range(ord(char), ord(end) + 1))
        return frozenset(char)

    def quantified(self, atom: Chars | Group) -> Item:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
        elif char == "{" and self._is_bound():
            low, high = self.bounds()
        else:
            return Item(atom)
        if self.peek() == "?":
            self.pos += 1  # lazy: the same strings match in full
        if self.peek() in ("*", "+", "?", "{"):
            raise Unsupported("repeated quantifier")
        return Item(atom, low, high)

    def _is_bound(self) -> bool:
        end = self.text.find("}", self.pos)
        inner = self.text[self.pos + 1 : end] if end > 0 else ""
        parts = inner.split(",")
        return 0 < len(parts) <= 2 and all(p.isdigit() or p == "" for p in parts) and inner not in ("", ",")

    def bounds(self) -> tuple[int, int | None]:
        end = self.text.index("}", self.pos)
        parts = self.text[self.pos + 1 : end].split(",")
        self.pos = end + 1
        low = int(parts[0] or 0)
        high: int | None = low if len(parts) == 1 else (int(parts[1]) if parts[1] else None)
        if high is not None and high < low:
            raise Unsupported("inverted repetition bounds")
        if low > MAX_REPEAT:
            raise Unsupported(f"repetition of more than {MAX_REPEAT}")
        if high is not None and high > MAX_REPEAT:
            self.loosened.append(f"upper bound above {MAX_REPEAT}")
            return low, None
        return low, high


def _literal(char: str) -> Chars:
    if char not in ALPHABET:
        raise Unsupported("a character outside printable ASCII, or one JSON must escape")
    return Chars(frozenset(char))


def parse(pattern: str) -> Pattern:
    """The pattern's tree; raises :class:`Unsupported` outside the safe subset."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise Unsupported("pattern too long")
    start = pattern.startswith("^")
    parser = _Parser(pattern)
    parser.pos = int(start)
    body = parser.alternatives(0)
    end = parser.peek() == "$" and parser.pos == len(pattern) - 1
    if parser.pos + end != len(pattern):
        raise Unsupported(f"{parser.peek()!r} at {parser.pos}")
    return Pattern(body, start, end, tuple(dict.fromkeys(parser.loosened)))


def _emit_chars(chars: frozenset[str]) -> str:
    if len(chars) == 1 and next(iter(chars)).isalnum():
        return next(iter(chars))
    codes = sorted(ord(c) for c in chars)
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "[" + "".join(f"\\x{a:02X}" if a == b else f"\\x{a:02X}-\\x{b:02X}" for a, b in ranges) + "]"


def _emit_group(group: Group) -> str:
    return "|".join("".join(_emit_item(item) for item in branch) for branch in group.alternatives)


def _emit_item(item: Item) -> str:
    atom = _emit_chars(item.atom.chars) if isinstance(item.atom, Chars) else f"({_emit_group(item.atom)})"
    if (item.low, item.high) == (1, 1):
        return atom
    if (item.low, item.high) == (0, None):
        return atom + "*"
    if (item.low, item.high) == (1, None):
        return atom + "+"
    if (item.low, item.high) == (0, 1):
        return atom + "?"
    if item.high is None:
        return f"{atom}{{{item.low},}}"
    return f"{atom}{{{item.low}}}" if item.low == item.high else f"{atom}{{{item.low},{item.high}}}"


def to_grammar_pattern(pattern: str) -> str:
    """``pattern`` in the converter-safe form; raises :class:`Unsupported`."""
    return lower_pattern(pattern)[0]


def lower_pattern(pattern: str) -> tuple[str, tuple[str, ...]]:
    """(``pattern`` in the converter-safe form, what was loosened); raises :class:`Unsupported`."""
    tree = parse(pattern)
    body = _emit_group(tree.body)
    if len(tree.body.alternatives) > 1 or not (tree.anchored_start and tree.anchored_end):
        body = f"({body})"  # GBNF's | binds loosest: ungrouped it would split the quotes
    anywhere = _emit_chars(ALPHABET) + "*"
    head = "" if tree.anchored_start else anywhere
    tail = "" if tree.anchored_end else anywhere
    return f"^{head}{body}{tail}$", tree.loosened
