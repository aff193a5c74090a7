"""Policy: which texts of an OpenAI or Anthropic request may be compressed, and what the question is.

Every text in the request becomes a ``Slot`` that points back into the (decoded) body, so the
rewritten text is written in place and everything else (tools, images, tool calls, unknown fields,
``cache_control``) goes upstream untouched.

Slot kinds:
- ``tool``: a tool result (OpenAI ``role: tool``/``function`` content; Anthropic ``tool_result``
  content). Compressed whole when at least ``min_tokens`` long.
- ``user``: user text. The *last* text part of a user message keeps its trailing question verbatim
  (``split=True``, see ``split_question``); earlier text parts are compressed whole.
- ``text``: everything else (system prompt, assistant text, developer messages). Never compressed
  by default; only ``<ctxgate:compress>`` regions inside it are (explicit markup overrides defaults).

ctxgate tags are stripped from every slot, compressed or not, so they never reach upstream. Texts
we do not own (tool definitions, tool-call arguments, Anthropic thinking blocks) are never touched.

The question rule (``split_question``), for the last text part of a user message:
1. if ``ctxgate.question`` is given and occurs in the text, the tail from its last occurrence;
2. else the last paragraph (after the last blank line), else the last line, else the last
   sentence -- the first of these that is at most ``QUESTION_MAX_CHARS`` long and leaves valid
   markup on both sides;
3. else there is no verbatim tail and the whole text may be compressed.
The rule depends only on the message's own text, so a message is treated the same on every turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from compressor import InvalidRequest, has_markup, parse_markup, strip_markup

SlotKind = Literal["tool", "user", "text"]
QUESTION_MAX_CHARS = 2000

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
    split: bool = False      # user text whose trailing question stays verbatim

    def write(self, text: str) -> None:
        self.holder[self.key] = text


@dataclass
class Plan:
    slots: list[Slot]
    question: str | None     # guides question-aware compression of new context


@dataclass(frozen=True)
class Split:
    context: str             # compressible part
    sep: str                 # the whitespace between the two, kept as is
    tail: str                # kept verbatim (markup stripped)


def split_question(text: str, question: str | None = None) -> Split:
    """Split ``text`` into compressible context and the verbatim question tail (module docstring)."""
    if question and question.strip():
        q = question.strip()
        at = text.rfind(q)
        if at > 0 and _valid(text[:at]) and _valid(text[at:]):
            context = text[:at]
            stripped = context.rstrip()
            return Split(stripped, context[len(stripped):], text[at:])
    body = text.rstrip()
    for pattern in (_PARA, _LINE, _SENT):
        for m in reversed(list(pattern.finditer(body))):
            if m.start() == 0:
                continue
            tail = text[m.end():]
            if len(tail.strip()) > QUESTION_MAX_CHARS:
                break                   # this kind of break leaves too long a tail; try a finer one
            context = text[: m.start()]
            if _valid(context) and _valid(tail):
                return Split(context, m.group(0), tail)
    return Split(text, "", "")


def _valid(text: str) -> bool:
    if not has_markup(text):
        return True
    try:
        parse_markup(text)
    except InvalidRequest:
        return False
    return True


# --------------------------------------------------------------------------- OpenAI


def openai_plan(body: dict[str, Any], question: str | None = None) -> Plan:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list")
    slots: list[Slot] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        role = m.get("role")
        kind: SlotKind = "tool" if role in ("tool", "function") else "user" if role == "user" else "text"
        content = m.get("content")
        if isinstance(content, str):
            slots.append(Slot(m, "content", content, kind, split=kind == "user"))
        elif isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"
                     and isinstance(p.get("text"), str)]
            for j, p in enumerate(parts):
                slots.append(Slot(p, "text", p["text"], kind, split=kind == "user" and j == len(parts) - 1))
    return Plan(slots, question or _last_question(slots))


# ------------------------------------------------------------------------ Anthropic


def anthropic_plan(body: dict[str, Any], question: str | None = None) -> Plan:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("'messages' must be a list")
    slots: list[Slot] = []
    system = body.get("system")
    if isinstance(system, str):
        slots.append(Slot(body, "system", system, "text"))
    elif isinstance(system, list):
        slots.extend(Slot(b, "text", b["text"], "text") for b in system
                     if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InvalidRequest(f"messages[{i}] must be an object")
        user = m.get("role") == "user"
        content = m.get("content")
        if isinstance(content, str):
            slots.append(Slot(m, "content", content, "user" if user else "text", split=user))
            continue
        if not isinstance(content, list):
            continue
        texts = [b for b in content if isinstance(b, dict) and b.get("type") == "text"
                 and isinstance(b.get("text"), str)]
        for b in content:
            if not isinstance(b, dict):
                continue
            if b.get("type") == "text" and isinstance(b.get("text"), str):
                kind: SlotKind = "user" if user else "text"
                slots.append(Slot(b, "text", b["text"], kind, split=user and b is texts[-1]))
            elif b.get("type") == "tool_result":
                inner = b.get("content")
                if isinstance(inner, str):
                    slots.append(Slot(b, "content", inner, "tool"))
                elif isinstance(inner, list):
                    slots.extend(Slot(x, "text", x["text"], "tool") for x in inner
                                 if isinstance(x, dict) and x.get("type") == "text" and isinstance(x.get("text"), str))
            # image, document, tool_use, thinking, redacted_thinking...: never touched
    return Plan(slots, question or _last_question(slots))


def _last_question(slots: list[Slot]) -> str | None:
    for s in reversed(slots):
        if s.kind == "user" and s.split:
            tail = split_question(s.text).tail.strip()
            if not tail:
                return None
            try:
                return parse_markup(tail).text
            except InvalidRequest:
                return tail
    return None


def plan_for(route: str, body: dict[str, Any], question: str | None = None) -> Plan:
    return anthropic_plan(body, question) if route == "messages" else openai_plan(body, question)


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
