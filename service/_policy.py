"""Policy: which texts of an OpenAI or Anthropic request may be compressed, and what the question is.

Every text in the request becomes a ``Slot`` that points back into the (decoded) body, so the
rewritten text is written in place and everything else (tools, images, tool calls, unknown fields,
``cache_control``) goes upstream untouched.

Slot kinds:
- ``tool``: a tool result (OpenAI ``role: tool``/``function`` content; Anthropic ``tool_result``
  content). Compressed whole when at least ``min_tokens`` long.
- ``user``: user text. The *last* text part of a user message keeps its trailing question verbatim
  (``split=True``, see ``split_question``); earlier text parts are compressed whole.
- ``system``: system and developer text. Compressed (``policy.system_prompt``) when it is long: its
  first paragraph (the instructions) stays verbatim, the rest (retrieved documents, typically) is
  compressed when at least ``min_tokens``; short system prompts are never touched.
- ``text``: everything else (assistant text). Never compressed by default; only
  ``<ctxgate:compress>`` regions inside it are (explicit markup overrides defaults).
Anthropic ``document`` blocks with text sources count as ``tool``.

ctxgate tags are stripped from every slot, compressed or not, so they never reach upstream. Texts
we do not own (tool definitions, tool-call arguments, Anthropic thinking blocks) are never touched.

The question rule (``split_question``), for the last text part of a user message:
1. if ``ctxgate.question`` is given and occurs in the text, the tail from its last occurrence;
2. else the last paragraph (after the last blank line), else the last line, else the last
   sentence -- the first of these that is at most ``QUESTION_MAX_CHARS`` long and leaves valid
   markup on both sides;
3. else there is no verbatim tail and the whole text may be compressed.
The rule depends only on the message's own text, so a message is treated the same on every turn.

The question each segment is compressed for (``Slot.question``), stable as turns are appended:
- a *user turn* is a run of user messages with text, with no assistant message between them (a
  question sent as its own message after the documents belongs to the same turn); its question is
  that of its last message: the whole text when it is short (``SHORT_QUESTION_CHARS``), else its
  trailing part by the rule above if that reads like a question (a "?", a ``Question:`` label, a
  question word or an imperative such as "Summarize");
- user and system text: the question of their own turn, or of the first user turn after them;
- tool results (and Anthropic documents): the question of the latest user turn before them (the
  one that made the model call the tool), else of the first one after.
An explicit ``ctxgate.question`` / ``x-ctxgate-question`` overrides every segment's question.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass
from typing import Any, Literal

from ctxgate.compressor import InvalidRequest, has_markup, parse_markup, strip_markup

SlotKind = Literal["tool", "user", "system", "text"]
QUESTION_MAX_CHARS = 2000
# a user message this short is a question as a whole (several sentences on one line included):
# under the default min_tokens, so it is never compressed itself
SHORT_QUESTION_CHARS = 600
HEAD_TRIES = 8  # paragraph breaks tried for a system prompt's verbatim head
# a long message's trailing part is its question only when it reads like one; otherwise it is the
# end of a document (the question then comes from the next user turn)
_ASKS = re.compile(
    r"\?|^\s*(?:question|query|q|task|instruction)s?\s*[:.]|^\s*(?:who|whom|whose|what|when|where|"
    r"why|how|which|is|are|was|were|do|does|did|can|could|should|would|will|list|explain|describe|"
    r"summari[sz]e|find|give|tell|name|compare|quote|answer)\b",
    re.I | re.M,
)

_PARA = re.compile(r"\n[ \t\r]*\n\s*")
_LINE = re.compile(r"\n\s*")
_SENT = re.compile(r"(?<=[.!?])\s+(?=\S)")
# in a JSON body a tag shows as a literal "ctxgate:" (any case), or with letters \u-escaped
_ESCAPED_ASCII = re.compile(rb"\\u00[3-7]")


@dataclass
class Slot:
    """One text in the request body: ``holder[key]`` is where it lives."""

    holder: Any
    key: str | int
    text: str
    kind: SlotKind
    split: bool = False  # user text whose trailing question stays verbatim
    question: str | None = None  # what this segment is compressed for (module docstring)
    message: int = -1  # index of the message it is in (-1: the Anthropic system prompt)

    def __post_init__(self) -> None:
        if self.kind in LITERAL_KINDS:
            self.text = _escape_tags(self.text)

    def write(self, text: str) -> None:
        self.holder[self.key] = _unescape_tags(text) if self.kind in LITERAL_KINDS else text


# Tool results and assistant text are not the client's own words: a scraped page or a file that
# mentions "<ctxgate:keep>" broke the whole conversation with a 400 (even bypassed), and balanced tags
# in it were stripped (second audit). Their tags are made inert for everything downstream (an
# invisible U+2060 after the "<"; an existing "<" + U+2060 is doubled first, so the round trip is
# exact) and restored when the slot is written back.
LITERAL_KINDS = frozenset({"tool", "text"})
_INERT = "\u2060"
_TAG_OPEN = re.compile(r"<(?=/?ctxgate:)", re.I)
_INERT_OPEN = re.compile("<" + _INERT + "(" + _INERT + "?)")


def _escape_tags(text: str) -> str:
    if not has_markup(text) and _INERT not in text:
        return text
    return _TAG_OPEN.sub("<" + _INERT, text.replace("<" + _INERT, "<" + _INERT * 2))


def _unescape_tags(text: str) -> str:
    if _INERT not in text:
        return text
    return _INERT_OPEN.sub(lambda m: "<" + m.group(1), text)


@dataclass
class Plan:
    slots: list[Slot]
    question: str | None  # the latest user question (each slot has its own, see Slot.question)
    question_source: str = "none"  # explicit | found | none


@dataclass(frozen=True)
class Parts:
    """A slot's text as verbatim head + compressible context + verbatim tail (their concatenation)."""

    head: str
    context: str
    tail: str


@dataclass(frozen=True)
class Split:
    context: str  # compressible part
    sep: str  # the whitespace between the two, kept as is
    tail: str  # kept verbatim (markup stripped)


def split_question(text: str, question: str | None = None) -> Split:
    """Split ``text`` into compressible context and the verbatim question tail (module docstring)."""
    if question and question.strip():
        q = question.strip()
        at = text.rfind(q)
        if at > 0 and _valid(text[:at]) and _valid(text[at:]):
            context = text[:at]
            stripped = context.rstrip()
            return Split(stripped, context[len(stripped) :], text[at:])
    body = text.rstrip()
    for pattern in (_PARA, _LINE, _SENT):
        for m in reversed(list(pattern.finditer(body))):
            if m.start() == 0:
                continue
            tail = text[m.end() :]
            if len(tail.strip()) > QUESTION_MAX_CHARS:
                break  # this kind of break leaves too long a tail; try a finer one
            context = text[: m.start()]
            if _valid(context) and _valid(tail):
                return Split(context, m.group(0), tail)
    return Split(text, "", "")


def parts(slot: Slot, explicit_question: str | None = None) -> Parts:
    """What of ``slot`` may be compressed: user text keeps its trailing question, system text its
    first paragraph (the instructions); everything else is all context."""
    text = slot.text
    if slot.split:
        sp = split_question(text, explicit_question)
        tail = sp.tail.strip()
        if tail and not _ASKS.search(tail) and slot.question and slot.question.strip() not in tail:
            # the question is in another message and this last paragraph does not ask anything:
            # it is the last document, compressed like the others
            return Parts("", text, "")
        return Parts("", sp.context, sp.sep + sp.tail)
    if slot.kind == "system":
        # the first few paragraph breaks only: each try parses the markup of the whole text
        for m in itertools.islice((m for m in _PARA.finditer(text) if m.start() > 0), HEAD_TRIES):
            if _valid(text[: m.start()]) and _valid(text[m.end() :]):
                return Parts(text[: m.end()], text[m.end() :], "")
        return Parts(text, "", "")  # one paragraph: instructions only, never compressed
    return Parts("", text, "")


def user_question(text: str, *, guess_tail: bool = True) -> str | None:
    """The question a user message asks: all of it when short, else its trailing question (only
    with ``guess_tail``: a long message's last paragraph may be a document, not a question)."""
    body = text.strip()
    if not body:
        return None
    if len(body) <= SHORT_QUESTION_CHARS:
        return _plain(body)
    if not guess_tail:
        return None
    tail = split_question(text).tail.strip()
    return _plain(tail) if tail and _ASKS.search(tail) else None


def _plain(text: str) -> str:
    try:
        return parse_markup(text).text
    except InvalidRequest:
        return text


def _valid(text: str) -> bool:
    if not has_markup(text):
        return True
    try:
        parse_markup(text)
    except InvalidRequest:
        return False
    return True


# --------------------------------------------------------------------------- OpenAI


def openai_plan(body: dict[str, Any], question: str | None = None, *, guess_tail: bool = True) -> Plan:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list")
    slots: list[Slot] = []
    roles: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        role = m.get("role")
        roles.append(role if isinstance(role, str) else "")
        kind: SlotKind = (
            "tool"
            if role in ("tool", "function")
            else "user"
            if role == "user"
            else "system"
            if role in ("system", "developer")
            else "text"
        )
        content = m.get("content")
        if isinstance(content, str):
            slots.append(Slot(m, "content", content, kind, split=kind == "user", message=i))
        elif isinstance(content, list):
            texts = [
                p for p in content if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            ]
            for j, p in enumerate(texts):
                slots.append(Slot(p, "text", p["text"], kind, split=kind == "user" and j == len(texts) - 1, message=i))
    return _questions(slots, roles, question, guess_tail)


# ------------------------------------------------------------------------ Anthropic


def anthropic_plan(body: dict[str, Any], question: str | None = None, *, guess_tail: bool = True) -> Plan:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list")
    slots: list[Slot] = []
    system = body.get("system")
    if isinstance(system, str):
        slots.append(Slot(body, "system", system, "system"))
    elif isinstance(system, list):
        slots.extend(
            Slot(b, "text", b["text"], "system")
            for b in system
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
    roles: list[str] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        user = m.get("role") == "user"
        role = m.get("role")
        roles.append(role if isinstance(role, str) else "")
        content = m.get("content")
        if isinstance(content, str):
            slots.append(Slot(m, "content", content, "user" if user else "text", split=user, message=i))
            continue
        if not isinstance(content, list):
            continue
        texts = [
            b for b in content if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        ]
        for b in content:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "text" and isinstance(b.get("text"), str):
                kind: SlotKind = "user" if user else "text"
                slots.append(Slot(b, "text", b["text"], kind, split=user and b is texts[-1], message=i))
            elif b.get("type") == "tool_result":
                inner = b.get("content")
                if isinstance(inner, str):
                    slots.append(Slot(b, "content", inner, "tool", message=i))
                elif isinstance(inner, list):
                    slots.extend(
                        Slot(x, "text", x["text"], "tool", message=i)
                        for x in inner
                        if isinstance(x, dict) and x.get("type") == "text" and isinstance(x.get("text"), str)
                    )
            elif b.get("type") == "document" and isinstance(src := b.get("source"), dict):
                if src.get("type") == "text" and isinstance(src.get("data"), str):
                    slots.append(Slot(src, "data", src["data"], "tool", message=i))
            # image, tool_use, thinking, redacted_thinking, non-text documents...: never touched
    return _questions(slots, roles, question, guess_tail)


def _questions(slots: list[Slot], roles: list[str], explicit: str | None, guess_tail: bool) -> Plan:
    """Give every slot its question (module docstring) and the plan the latest one."""
    if explicit is not None and explicit.strip():
        for s in slots:
            s.question = explicit
        return Plan(slots, explicit, "explicit")
    # each user message with text: its question; turns are runs of those with no assistant between
    asked: dict[int, str | None] = {}
    for s in slots:
        if s.kind == "user" and s.split:
            asked[s.message] = user_question(s.text, guess_tail=guess_tail)
    assistants = list(itertools.accumulate((r == "assistant" for r in roles), initial=0))  # before each message
    order = sorted(asked)
    turn_of: dict[int, int] = {}  # message -> last question message of its turn (one backward pass)
    for k in range(len(order) - 1, -1, -1):
        i = order[k]
        nxt = order[k + 1] if k + 1 < len(order) else None
        joined = nxt is not None and assistants[nxt] == assistants[i + 1]  # no assistant in between
        turn_of[i] = turn_of[nxt] if joined and nxt is not None else i
    turns = sorted(set(turn_of.values()))
    turn_question = {j: asked[j] for j in turns}
    with_question = [j for j in turns if turn_question[j]]

    def before(i: int) -> str | None:
        k = bisect.bisect_left(with_question, i)
        return turn_question[with_question[k - 1]] if k > 0 else None

    def after(i: int) -> str | None:
        k = bisect.bisect_left(with_question, i)
        return turn_question[with_question[k]] if k < len(with_question) else None

    for s in slots:
        if s.kind == "user" and s.message in turn_of:
            s.question = turn_question[turn_of[s.message]] or after(s.message)
        elif s.kind == "tool":
            s.question = before(s.message) or after(s.message)
        else:
            s.question = after(s.message) if s.message >= 0 else after(0)
    latest = next((turn_question[j] for j in reversed(turns) if turn_question[j]), None)
    return Plan(slots, latest, "found" if latest else "none")


def plan_for(route: str, body: dict[str, Any], question: str | None = None, *, guess_tail: bool = True) -> Plan:
    """``guess_tail=False`` (``/v1/compress``): a long message's last paragraph is never taken for the
    question; only a short user message or an explicit question count."""
    plan = anthropic_plan if route == "messages" else openai_plan
    return plan(body, question, guess_tail=guess_tail)


def strip_tags(route: str, body: dict[str, Any], raw: bytes) -> bool:
    """Remove ctxgate tags from every text slot of ``body`` in place; True when there were any.

    ``raw`` is the body's JSON: without a literal ``ctxgate:`` or a ``\\u`` escape that could spell
    one, no slot can hold a tag and the body is not walked (the bypass path forwards ``raw`` as is)."""
    # bytes.lower + ``in`` and a literal-prefix regex: ~25 us on a 10 KB body; one case-insensitive
    # regex for both was 155 us, on every bypassed request
    if b"ctxgate:" not in raw.lower() and (b"\\u00" not in raw or _ESCAPED_ASCII.search(raw) is None):
        return False
    return strip_slots(plan_for(route, body).slots)


def strip_slots(slots: list[Slot]) -> bool:
    """Remove ctxgate tags from each slot's text in place; True when there were any."""
    found = False
    for slot in slots:
        if has_markup(slot.text):
            slot.write(strip_markup(slot.text))
            found = True
    return found
