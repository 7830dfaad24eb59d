"""Task classifier: which kind of coding task a request is, and how big it is.

The router picks a model per request from ``classify(prompt, system_prompt, context)``.
It must be cheap (tens of microseconds, stdlib only, no network) and deterministic, and
it must work when the request never names the task ("make sure this handles empty input"
is a testing request). So no single keyword decides; several kinds of evidence are added
up as per-task scores:

1. **Phrasing rules** (``prompt_rules`` in ``sidecar/data/classifier.json``): hand-weighted
   regexes for intent verbs and question forms ("what does ... do", "why does", imperative
   "write/implement"), for the object of the request (tests, coverage, edge cases; docs,
   README, docstring; architecture, roadmap, migration plan), for judgements ("is this
   thread safe?", "before I merge"), behaviour-preserving changes ("without changing
   behaviour", "too long", "duplicate") and negations ("don't write code yet",
   "no tests"). Each rule carries small positive and negative weights and a reason.
2. **System prompt rules** (``system_rules``): "You are a code reviewer" shifts toward
   ``code_review`` and so on; they matter most when the prompt itself is vague.
3. **Structure**: code found in the prompt (fences, code-like lines) or in the context
   (any JSON: a string, ``{"file", "selection"}``, lists of files), diff markers, stubs
   (``TODO``, ``...``, an empty body), test code or test/doc file names, question form.
4. **A learned word model**: multinomial naive Bayes over the request's words and
   bigrams, trained offline on the ``train`` split only (``python -m
   tests.classifier.train``), stored as centred log-likelihoods and added with a small,
   clipped weight so it breaks ties between rules but never overrides them alone.

Scores go through a softmax; ``confidence`` is the margin between the two best. Code
inside the prompt or context feeds the structural features, never the phrasing rules,
so identifiers like ``test_`` or ``review`` inside pasted code do not count as intent.
Complexity is a separate point score from size (token estimate), files and components
mentioned, system-scale words (architecture, distributed, migrate the whole ...) and the
number of requested steps. Inputs of any size are truncated to bounded windows first.

Speed: each regex is tried only at words that start with one of its literal "heads"
(precomputed from the regex's parse tree and stored in the data file), so a call costs
~100 us. Accuracy and the labelling policy: ``tests/classifier/README.md``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from itertools import islice, pairwise
from typing import Any

TASK_TYPES = ("code_generation", "code_explanation", "code_review", "planning", "refactoring", "testing",
              "documentation")
_KEYS = ("gen", "explain", "review", "plan", "refactor", "test", "doc")  # short names used in the data file
_N = len(TASK_TYPES)

_PROMPT_WINDOW = 16_000               # head + tail of a huge prompt that is looked at
_TEXT_HEAD, _TEXT_TAIL = 3000, 1000   # request text window for rules and words
_CODE_WINDOW = 8_000                  # chars of code/context analysed for structure
_MAX_NODES = 500                      # context JSON nodes visited
_MAX_LINES = 400


@dataclass(frozen=True, slots=True)
class Classification:
    task_type: str            # one of TASK_TYPES
    complexity: str           # "low" | "medium" | "high"
    confidence: float         # 0..1: probability margin between the best and the second-best type
    scores: dict[str, float]  # softmax probability per task type
    signals: tuple[str, ...]  # short human-readable reasons


Weights = tuple[tuple[int, float], ...]
_HEAD_LEN = 4  # heads are at most this many chars: a rule can only match if a word of the text starts with one


def _weights(raw: dict[str, float]) -> Weights:
    return tuple((_KEYS.index(k), float(v)) for k, v in raw.items())


class _Gated:
    """Regexes searched only when the text has a word starting with one of their literal heads.

    Heads are derived offline from each pattern (``tests/classifier/train.py``): ``abc`` means
    a word starting with "abc", ``abc$`` the word "abc". A pattern without heads is always
    searched. Patterns compile on first use to keep import cheap.
    """

    __slots__ = ("_always", "_cache", "_compiled", "_index", "_patterns")

    def __init__(self, patterns: list[str], heads: dict[str, list[str]]) -> None:
        self._patterns = patterns
        self._compiled: list[re.Pattern[str] | None] = [None] * len(patterns)
        index: dict[str, list[int]] = {}
        always: list[int] = []
        for i, p in enumerate(patterns):
            for h in heads.get(p) or ():
                index.setdefault(h, []).append(i)
            if not heads.get(p):
                always.append(i)
        self._index = {h: tuple(ids) for h, ids in index.items()}
        self._always = tuple(always)
        self._cache: dict[str, tuple[int, ...]] = {}   # word -> candidate ids; bounded

    def matches(self, text: str, words: dict[str, list[int]]) -> list[int]:
        """Indices (ascending) of the patterns found in ``text``; ``words`` maps its words to their offsets.

        A gated pattern is only tried (``match``) where a word starting with one of its heads begins.
        """
        where: dict[int, list[int]] = {}
        ids_of = self._ids
        for w, offsets in words.items():
            for i in ids_of(w):
                seen = where.get(i)
                if seen is None:
                    where[i] = list(offsets)
                else:
                    seen.extend(offsets)
        compiled, regex = self._compiled, self._regex
        found = [i for i in self._always if (compiled[i] or regex(i)).search(text)]
        for i, offsets in where.items():
            rx = compiled[i] or regex(i)
            if len(offsets) > 8:
                if rx.search(text):
                    found.append(i)
                continue
            match = rx.match
            for pos in offsets:
                if match(text, pos):
                    found.append(i)
                    break
        found.sort()
        return found

    def _ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            keys = (word + "$", *(word[:n] for n in range(1, min(_HEAD_LEN, len(word)) + 1)))
            ids = tuple(sorted({i for key in keys for i in self._index.get(key, ())}))
            if len(self._cache) >= 8192:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _regex(self, i: int) -> re.Pattern[str]:
        rx = self._compiled[i]
        if rx is None:
            rx = self._compiled[i] = re.compile(r"(?<!\w)(?:" + self._patterns[i] + ")")
        return rx


def _word_offsets(text: str) -> dict[str, list[int]]:
    words: dict[str, list[int]] = {}
    for m in _WORD.finditer(text):
        words.setdefault(m.group(), []).append(m.start())
    return words


def _load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("sidecar.data").joinpath("classifier.json").read_text("utf-8"))
    return data


_DATA = _load()
_HEADS: dict[str, list[str]] = _DATA["heads"]
_CX = _DATA["complexity"]
# One gated set holds the prompt rules, then the complexity word lists, so words are looked up once.
_PROMPT_EFFECTS = tuple((_weights(r[1]), str(r[2])) for r in _DATA["prompt_rules"])
_GROUPS: list[tuple[int, int]] = [(0, len(_PROMPT_EFFECTS))]   # index ranges: rules, high, medium, small
for _key in ("high", "medium", "small"):
    _GROUPS.append((_GROUPS[-1][1], _GROUPS[-1][1] + len(_CX[_key])))
_TEXT_RULES = _Gated([r[0] for r in _DATA["prompt_rules"]] + _CX["high"] + _CX["medium"] + _CX["small"], _HEADS)
_SYSTEM_RULES = _Gated([r[0] for r in _DATA["system_rules"]], {})
_SYSTEM_EFFECTS = tuple((_weights(r[1]), str(r[2])) for r in _DATA["system_rules"])
_BIAS = _weights(_DATA["bias"])
_STRUCT: dict[str, Weights] = {k: _weights(v) for k, v in _DATA["structure"].items()}
_NB: dict[str, tuple[float, ...]] = {k: tuple(v) for k, v in _DATA["naive_bayes"]["features"].items()}
_NB_WEIGHT = float(_DATA["naive_bayes"]["weight"])
_NB_CLIP = float(_DATA["naive_bayes"]["clip"])
del _DATA

_WS = re.compile(r"\s+")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "`": " "})
_FENCE = re.compile(r"```[^\n]*\n?(.*?)(?:```|\Z)", re.S)
# One match per code-looking line (multiline mode), so a single findall counts them.
_CODE_LINE = re.compile(
    r"^(?:(?:[ ]{4,}|\t)\S|\s*(?:def|class|import|from \S+ import|fn|func|function|const|let|var|return|pub|impl|"
    r"package|#include|struct|enum|select|insert|update|delete from|create table|alter table|with \w+ as|export|"
    r"async|if \(|for \(|while \(|#!)\b|\s*[-+]{3} |@@ |[^\n]*?(?:[;{}][ \t]*$|=>|:=|\w\([^)\n]{0,200}\)[ \t]*[:{]?[ \t]*$))",
    re.I | re.M)
_DIFF = re.compile(r"^(?:diff --git |\+\+\+ |--- a/|@@ -\d)", re.M)
_DIFF_FILE = re.compile(r"^\+\+\+ ", re.M)
_PLUS_LINE = re.compile(r"^\+", re.M)
_MINUS_LINE = re.compile(r"^-", re.M)
_STUB_MARKERS = ("TODO", "NotImplementedError", "todo!(", "unimplemented!")
_STUB_LINE = re.compile(r"^[ \t]*(?:pass|\.\.\.)[ \t]*$", re.M)
_TEST_MARKERS = ("def test_", "assert ", "assert(", "#[test]", "describe(", "expect(", "func Test", "@Test")
_TEST_PATH = re.compile(r"(?:^|/)(?:tests?|__tests__|spec)/|(?:^|/)test_[^/]*$|_test\.\w+$|\.(?:spec|test)\.\w+$", re.I)
_DOC_PATH = re.compile(r"\.(?:md|rst|adoc|txt)$|(?:^|/)docs?/|readme|changelog", re.I)
_PATHLIKE = re.compile(r"^[\w.\-/]+\.\w{1,6}$|^[\w.\-]+/$")
_FILE_MENTION = re.compile(r"(?<![\w/-])[\w/-]{1,80}\.(?:py|ts|tsx|js|jsx|rs|go|java|rb|sql|sh|md|json|ya?ml|toml|c|h|cpp)\b")
_TOKEN = re.compile(r"[a-z0-9_']+|\?")
_WORD = re.compile(r"\w+")
_LIST_SEP = re.compile(r",|;| and | (?:\d+[.)]|[-*]) ")  # separators of requested parts (text is one line)
_PATH_KEYS = frozenset({"file", "path", "filename", "filepath", "files", "paths", "uri", "name"})
_SIZE_KEYS = frozenset({"lines", "line_count", "loc"})


@dataclass(slots=True)
class _Evidence:
    paths: list[str]
    code: str          # code/context text window
    code_chars: int    # total size of prompt code + context strings (for complexity)


def _walk_context(context: object) -> _Evidence:
    """Collect file paths and text from any JSON-like value, visiting a bounded number of nodes."""
    paths: list[str] = []
    texts: list[str] = []
    chars = kept = 0
    stack: list[tuple[str | None, object]] = [(None, context)]
    nodes = 0
    while stack and nodes < _MAX_NODES:
        key, node = stack.pop()
        nodes += 1
        if isinstance(node, str):
            one_line = len(node) < 300 and "\n" not in node
            if one_line and (key in _PATH_KEYS or _PATHLIKE.match(node)):
                paths.append(node)
                continue
            chars += len(node)
            if kept < _CODE_WINDOW:
                texts.append(node[:_CODE_WINDOW - kept])
                kept += len(texts[-1])
        elif isinstance(node, dict):
            for k, v in islice(node.items(), 200):
                stack.append((str(k).lower(), v))
        elif isinstance(node, list | tuple):
            stack.extend((key, v) for v in reversed(node[:200]))
        elif isinstance(node, int) and not isinstance(node, bool) and key in _SIZE_KEYS:
            chars += max(0, min(node, 1_000_000)) * 40
    return _Evidence(paths, "\n".join(texts), chars)


def _split_prompt(prompt: str) -> tuple[str, str]:
    """(request text, code) — fenced blocks and, in multi-line prompts, code-like lines are code."""
    code: list[str] = []
    if "```" in prompt:
        code = [m.group(1) for m in _FENCE.finditer(prompt)]
        prompt = _FENCE.sub(" ", prompt)
    if prompt.count("\n") >= 2 and _CODE_LINE.search(prompt):
        text: list[str] = []
        for line in islice(prompt.splitlines(), _MAX_LINES):
            (code if _CODE_LINE.match(line) else text).append(line)
        prompt = "\n".join(text)
    return prompt, "\n".join(code)


def _norm(text: str) -> str:
    if len(text) > _TEXT_HEAD + _TEXT_TAIL:
        text = text[:_TEXT_HEAD] + " " + text[-_TEXT_TAIL:]
    return _WS.sub(" ", text.lower().translate(_QUOTES)).strip()


def _words(text: str) -> set[str]:
    """Word and bigram features of normalised request text (shared with the offline trainer)."""
    tokens = _TOKEN.findall(text)[:400]
    feats = set(tokens)
    feats.update(a + " " + b for a, b in pairwise(tokens))
    return feats


def classify(prompt: str, system_prompt: str | None = None, context: object = None) -> Classification:
    """Classify one request. Never raises on any text; deterministic; stdlib only."""
    prompt = prompt if isinstance(prompt, str) else str(prompt)
    window = prompt if len(prompt) <= _PROMPT_WINDOW else prompt[:_PROMPT_WINDOW - 4000] + "\n" + prompt[-4000:]
    raw_text, prompt_code = _split_prompt(window)
    text = _norm(raw_text)
    ev = _walk_context(context)
    code = (prompt_code + "\n" + ev.code)[:_CODE_WINDOW] if prompt_code else ev.code

    found = _TEXT_RULES.matches(text, _word_offsets(text))
    effects = [_PROMPT_EFFECTS[i] for i in found if i < _GROUPS[0][1]]
    if system_prompt:
        system = _norm(system_prompt if isinstance(system_prompt, str) else str(system_prompt))
        effects += [_SYSTEM_EFFECTS[i] for i in _SYSTEM_RULES.matches(system, _word_offsets(system))]
    structure = _structure(text, code, ev)
    effects += [(_STRUCT[key], reason) for key, reason in structure]

    scores = [0.0] * _N
    for i, w in _BIAS:
        scores[i] += w
    for weights, _reason in effects:
        for i, w in weights:
            scores[i] += w
    nb = _word_model(text)
    for i in range(_N):
        scores[i] += max(-_NB_CLIP, min(_NB_CLIP, nb[i] * _NB_WEIGHT))

    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    total = sum(exps)
    probs = [e / total for e in exps]
    ranked = sorted(range(_N), key=lambda i: (-probs[i], i))
    best = ranked[0]

    pro = sorted(((w, reason) for weights, reason in effects for i, w in weights if i == best and w > 0),
                 key=lambda wr: -wr[0])
    reasons = list(dict.fromkeys(reason for _w, reason in pro))
    if nb[best] > 0 and nb[best] == max(nb):
        reasons.append("word model agrees")
    hits = [sum(1 for i in found if lo <= i < hi) for lo, hi in _GROUPS[1:]]
    complexity = _complexity(text, prompt, code, ev, hits, TASK_TYPES[best], any(k == "diff" for k, _ in structure))
    return Classification(TASK_TYPES[best], complexity, round(probs[best] - probs[ranked[1]], 4),
                          {t: round(p, 4) for t, p in zip(TASK_TYPES, probs, strict=True)},
                          tuple(reasons[:6]) or ("no strong evidence; default",))


def _structure(text: str, code: str, ev: _Evidence) -> list[tuple[str, str]]:
    """Structural evidence: (key in the ``structure`` table, reason)."""
    out: list[tuple[str, str]] = []
    has_code = bool(code) and not code.isspace()
    code_lines = len(_CODE_LINE.findall(code)) if has_code else 0
    n_lines = code.count("\n") + 1
    if code_lines >= 2 or (has_code and n_lines <= 2):
        out.append(("code", f"code present ({n_lines} lines)"))
    elif not has_code:
        out.append(("no_code", "no code attached"))
    if has_code and (_DIFF.search(code) or (len(_PLUS_LINE.findall(code)) >= 2 and _MINUS_LINE.search(code))):
        out.append(("diff", "diff in the request"))
    if has_code and (any(m in code for m in _STUB_MARKERS) or _STUB_LINE.search(code)
                     or (code_lines >= 1 and code.rstrip().endswith((":", "{")))):
        out.append(("stub", "unfinished code (TODO/stub)"))
    if (has_code and any(m in code for m in _TEST_MARKERS)) or any(_TEST_PATH.search(p) for p in ev.paths):
        out.append(("test_code", "test code or test file in context"))
    if any(_DOC_PATH.search(p) for p in ev.paths):
        out.append(("doc_file", "documentation file in context"))
    if text.endswith("?"):
        out.append(("question", "phrased as a question"))
    if has_code and text.count(" ") < 4:
        out.append(("terse_with_code", "terse request about attached code"))
    return out


def _word_model(text: str) -> list[float]:
    """Naive Bayes evidence: sum of centred log-likelihoods of the known words and bigrams."""
    vectors = [v for v in map(_NB.get, sorted(_words(text))) if v is not None]  # sorted: hash-seed independent
    return [sum(column) for column in zip(*vectors, strict=True)] if vectors else [0.0] * _N


def _complexity(text: str, prompt: str, code: str, ev: _Evidence, hits: list[int], task: str, diff: bool) -> str:
    """Points from size, files, scale words and number of requested parts; thresholds in the data file."""
    tokens = (len(prompt) + ev.code_chars) / 4
    points = 0.0
    for limit, pts in _CX["size_points"]:
        if tokens > limit:
            points += pts
            break
    files = len(set(ev.paths)) + len(set(_FILE_MENTION.findall(text)))
    if diff:
        files = max(files, len(_DIFF_FILE.findall(code)))
    points += _CX["file_points"][min(files, len(_CX["file_points"]) - 1)]
    n_high, n_medium, n_small = hits
    points += min(_CX["high_cap"], _CX["high_each"] * n_high)
    points += min(_CX["medium_cap"], _CX["medium_each"] * n_medium)
    parts = len(_LIST_SEP.findall(text))
    points += _CX["parts_points"][min(parts, len(_CX["parts_points"]) - 1)]
    points += _CX["task_points"].get(task, 0.0) + (_CX["diff_points"] if diff and task == "code_review" else 0.0)
    if n_small:
        points += _CX["small_points"]
    low, high = _CX["thresholds"]
    return "low" if points < low else "medium" if points < high else "high"
