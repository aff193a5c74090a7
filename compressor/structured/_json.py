"""JSON that stays JSON: keep the records a question needs, plus the ones that stand out.

The output always parses, has the input's top-level shape, and every kept value is the input's
value (numbers keep their exact spelling; only long prose strings may be pruned by the text
compressor). Collections (arrays of 4+ items, objects with many homogeneous keys) lose items;
each one that lost some says so in a ``"_ctxgate_omitted"`` entry that a model reads as data.
Everything is iterative, so nesting depth costs no recursion and a 1M-item array is linear.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

from .._hops import hops
from ._detect import is_number, parse_json
from ._rank import _bitrev
from ._types import Crushed, Prune, Tools

MIN_ITEMS = 4  # a shorter array is walked into rather than sampled
MIN_MAP_KEYS = 12  # an object with this many same-shaped values is a collection (id -> record)
LONG_STRING = 600  # characters; longer prose values may be pruned by the text compressor
LONG_STRING_RATE = 0.5
MIN_FIT_RATE = 0.25  # a record that does not fit may keep as little as this share of its prose ...
FIT_STRING = LONG_STRING // 3  # ... in strings of at least this many characters (shorter ones stay whole)
PRUNED_STRING = 80  # a record already pruned may shrink further in strings down to this length
WHOLE_TOP = 3  # the most relevant items keep their long strings whole
EDGE_SHARE = 0.05  # the first and last item are always kept when each costs at most this share
ANOMALY_SHARE = 0.4  # anomalies are always kept, up to this share of the budget
SAMPLE_ITEMS = 64  # items per collection tokenized to learn the characters-per-token ratio
SCORE_CHARS = 2000
MARK = "_ctxgate_omitted"
TITLE_KEYS = ("title", "name")  # a record's own name, for multi-hop links

_BAD = re.compile(
    r"error|fail|fatal|crit|exception|timeout|timed.?out|denied|reject|abort|cancel|invalid|"
    r"unhealthy|\bdown\b|panic|refused|unavailable|unauthori[sz]ed|forbidden",
    re.I,
)
_STATUS_KEY = re.compile(r"status|state|level|severity|result|outcome|conclusion|health", re.I)
_ERROR_KEYS = frozenset({"error", "errors", "exception", "failure", "fault", "stacktrace", "traceback", "err"})
_OK_KEYS = frozenset({"ok", "success", "succeeded", "passed", "healthy", "valid"})


def dumps(value) -> str:
    """Compact JSON, iteratively; numbers parsed as their raw text are written back unchanged."""
    if not isinstance(value, (dict, list)):
        return _scalar(value)
    out: list[str] = []
    stack: list = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, _Lit):
            out.append(x.s)
        elif isinstance(x, dict):
            if not x:
                out.append("{}")
                continue
            out.append("{")
            stack.append(_Lit("}"))
            items = list(x.items())
            for i in range(len(items) - 1, -1, -1):
                k, v = items[i]
                stack.append(v)
                stack.append(_Lit(("," if i else "") + _str(str(k)) + ":"))
        elif isinstance(x, list):
            if not x:
                out.append("[]")
                continue
            out.append("[")
            stack.append(_Lit("]"))
            for i in range(len(x) - 1, -1, -1):
                stack.append(x[i])
                if i:
                    stack.append(_Lit(","))
        elif is_number(x):
            out.append(str.__str__(x))
        elif isinstance(x, str):
            out.append(_str(x))
        elif x is True:
            out.append("true")
        elif x is False:
            out.append("false")
        elif x is None:
            out.append("null")
        else:
            out.append(json.dumps(x))
    return "".join(out)


def _scalar(x) -> str:
    if is_number(x):
        return str.__str__(x)
    if isinstance(x, str):
        return _str(x)
    return "true" if x is True else "false" if x is False else "null" if x is None else json.dumps(x)


@dataclass(frozen=True)
class _Lit:
    s: str


def _str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


@dataclass
class _Coll:
    """A container whose items may be dropped. ``keys`` is set for object collections."""

    node: list | dict
    keys: list | None
    n: int
    kept: set[int] = field(default_factory=set)


def crush(text: str, tools: Tools) -> Crushed | None:
    """``text`` (one JSON value) within ``tools.budget``; None when it does not parse (then it is text)."""
    value = parse_json(text)
    if value is None:
        return None
    return crush_value(value, tools, render=dumps)


def crush_ndjson(text: str, tools: Tools) -> Crushed | None:
    """One JSON value per line: lines are the items; a kept line that was not pruned stays byte for byte."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    values = []
    for ln in lines:
        v = parse_json(ln)
        if v is None:
            return None
        values.append(v)
    originals = {id(v): (ln.strip(), dumps(v)) for v, ln in zip(values, lines)}

    def render(vs) -> str:
        out = []
        for x in vs:
            line, at_parse = originals.get(id(x), (None, None))
            now = dumps(x)
            out.append(line if line is not None and now == at_parse else now)
        return "\n".join(out)

    return crush_value(values, tools, render=render)


def crush_value(value, tools: Tools, *, render) -> Crushed:
    colls = _collections(value)
    full = render(value)
    if not colls:
        return _prune_strings_only(value, full, tools, render)
    items: list[tuple[int, int]] = []  # (collection, index)
    texts: list[str] = []
    for c, coll in enumerate(colls):
        for i in range(coll.n):
            items.append((c, i))
            body = dumps(_item(coll, i))
            texts.append(body if coll.keys is None else _str(str(coll.keys[i])) + ":" + body)
    ratio = _ratio(tools, colls, texts)
    # compact JSON alone may be enough (counted only when the estimate says it might be)
    if len(full) * ratio < 1.5 * tools.budget and tools.counter.count(full) <= tools.budget:
        return Crushed(full)
    compact = full if render is dumps else dumps(value)
    skeleton = max(0, len(compact) - sum(len(t) + 1 for t in texts)) * ratio + 12 * len(colls)
    relevance = tools.relevance
    labels = [_label(colls[c], i) for c, i in items] if relevance.active else []
    scores = relevance.score(labels) if relevance.active else None
    order = _order(items, scores, colls)
    if scores is not None and tools.multi_hop:
        order = _second_hop(order, scores, items, colls, labels, relevance.question)
    rank = {k: r for r, k in enumerate(order)}
    top = set(order[:WHOLE_TOP]) if tools.prune is not None else set(order)
    # costs in tokens; items below the top few are costed as if their long prose were pruned
    fitted: dict[int, float] = {}  # items pruned to fit: the share of their prose (FIT_STRING) kept
    cost = []
    for k, t in enumerate(texts):
        long_chars = 0 if k in top else _long_chars(_item(colls[items[k][0]], items[k][1]))
        cost.append((len(t) + 1 - long_chars * (1 - LONG_STRING_RATE)) * ratio)
    # (an object collection's item text is "key":value, so its key is costed with it)
    budget = tools.budget - skeleton
    # first and last of every collection, then anomalies up to their share, then the rest by rank
    # (first and last only when they are cheap: in a short list of long records they would crowd out the relevant ones)
    must = [k for k, (c, i) in enumerate(items) if i in (0, colls[c].n - 1) and cost[k] <= EDGE_SHARE * budget]
    odd = [k for k in sorted(_anomalies(colls), key=lambda k: rank[k]) if k not in set(must)]
    chosen = set(must)
    spent = sum(cost[k] for k in must)
    odd_spent = 0.0
    fixed = set(must)
    for k in odd:
        if odd_spent + cost[k] <= budget * ANOMALY_SHARE:
            chosen.add(k)
            fixed.add(k)
            odd_spent += cost[k]
    spent += odd_spent
    for k in order:
        if k in chosen:
            continue
        if spent + cost[k] > budget:
            # too long as costed: its prose pruned harder may still fit, and a relevant record with
            # half its text beats skipping to a less relevant one (a search result's second hop).
            # Once the budget is spent, most items cannot fit even at MIN_FIT_RATE of all their
            # text: that is told from their length alone, so a huge array is not walked twice
            room = budget - spent
            if tools.prune is None or (len(texts[k]) + 1) * MIN_FIT_RATE * ratio > room:
                continue
            prose = _long_chars(_item(colls[items[k][0]], items[k][1]), FIT_STRING)
            rate = _fitting_rate(room, len(texts[k]) + 1, prose, ratio)
            if rate is None:
                continue
            fitted[k] = rate
            cost[k] = (len(texts[k]) + 1 - prose * (1 - rate)) * ratio
        chosen.add(k)
        spent += cost[k]
    pruned = _prune_chosen(colls, items, (chosen - top) | fitted.keys(), fitted, tools)
    warnings: list[str] = []
    for _ in range(8):  # the estimate is close; correct it against the real count
        out = _render_kept(value, colls, items, chosen, tools, render)
        n = tools.counter.count(out)
        if n <= tools.budget:
            break
        optional = sorted((k for k in chosen if k not in fixed), key=lambda k: -rank[k])
        if not optional:
            warnings.append(f"JSON skeleton and anomalies ({n} tokens) exceed the budget ({tools.budget}); kept them")
            break
        excess, freed = (n - tools.budget) * 1.05, 0.0
        last = optional[0]
        if _shrink(_item(colls[items[last][0]], items[last][1]), excess, tools, last in pruned):
            continue  # the least relevant kept record lost some prose instead of all of it
        for k in optional:
            chosen.discard(k)
            freed += cost[k]
            if freed >= excess:
                break
    omitted = sum(coll.n for coll in colls) - len(chosen)
    return Crushed(out, omitted, warnings)


def _long_chars(item, min_chars: int = LONG_STRING) -> int:
    return sum(len(v) for _, _, v in _long_strings(item, min_chars))


def _shrink(item, excess: float, tools: Tools, pruned: bool) -> bool:
    """Prune ``item``'s prose (in place) by about ``excess`` tokens; False when it has too little
    prose for that (then the caller drops the item). A record that was kept whole has only its
    long strings cut; one already pruned may lose more of what is left of them."""
    if tools.prune is None:
        return False
    targets = list(_long_strings(item, PRUNED_STRING, 8) if pruned else _long_strings(item, FIT_STRING))
    if not targets:
        return False
    have = sum(tools.counter.count_many([v for *_, v in targets]))
    rate = (have - excess) / max(1, have)
    if rate < MIN_FIT_RATE:
        return False
    _prune_targets(targets, rate, tools.prune)
    return True


def _long_strings(item, min_chars: int = LONG_STRING, min_spaces: int = 20):
    """(container, key, value) for each long prose string inside ``item`` (iteratively)."""
    stack = [item]
    while stack:
        x = stack.pop()
        entries = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for key, v in entries:
            if isinstance(v, (dict, list)):
                stack.append(v)
            elif isinstance(v, str) and not is_number(v) and len(v) > min_chars and v.count(" ") > min_spaces:
                yield x, key, v


def _fitting_rate(room: float, chars: int, long_chars: int, ratio: float) -> float | None:
    """The share of an item's long prose to keep so that the item costs ``room`` tokens, or None
    when even MIN_FIT_RATE of it would not fit (or it has no prose to prune)."""
    if long_chars <= 0 or room <= 0:
        return None
    rate = 1 - (chars - room / ratio) / long_chars
    return None if rate < MIN_FIT_RATE else min(rate, 1.0)


def _prune_chosen(colls, items, which: set[int], fitted: dict[int, float], tools: Tools) -> set[int]:
    """Long prose strings in the chosen items that must shrink, pruned by the text compressor (in
    place): to LONG_STRING_RATE, or a ``fitted`` item's own rate in shorter strings too; one call
    per rate. Returns the items that had any."""
    if tools.prune is None or not which:
        return set()
    by_rate: dict[float, list] = {}
    done: set[int] = set()
    for k in sorted(which):
        item = _item(colls[items[k][0]], items[k][1])
        for target in _long_strings(item, FIT_STRING if k in fitted else LONG_STRING):
            by_rate.setdefault(fitted.get(k, LONG_STRING_RATE), []).append(target)
            done.add(k)
    for rate, targets in sorted(by_rate.items(), reverse=True):
        _prune_targets(targets, rate, tools.prune)
    return done


def _prune_targets(targets: list, rate: float, prune: Prune) -> None:
    """Each (container, key, value) of ``targets`` set to its value pruned to ``rate``, in one call."""
    for (x, key, _), new in zip(targets, prune([v for *_, v in targets], rate)):
        x[key] = new


def _label(coll: _Coll, i: int) -> str:
    """What an item is ranked by: its scalar values, and its key in an object collection."""
    flat = _flat(_item(coll, i))
    return f"{coll.keys[i]} {flat}" if coll.keys is not None else flat


def _item(coll: _Coll, i: int):
    return coll.node[coll.keys[i]] if coll.keys is not None else coll.node[i]


def _collections(value) -> list[_Coll]:
    """Outermost collections, found top-down without recursion; inside one, items are whole units."""
    out: list[_Coll] = []
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            if len(x) >= MIN_ITEMS:
                out.append(_Coll(x, None, len(x)))
            else:
                stack.extend(reversed([v for v in x if isinstance(v, (list, dict))]))
        elif isinstance(x, dict):
            if len(x) >= MIN_MAP_KEYS and _homogeneous(x):
                keys = list(x.keys())
                out.append(_Coll(x, keys, len(keys)))
            else:
                stack.extend(reversed([v for v in x.values() if isinstance(v, (list, dict))]))
    return out


def _homogeneous(d: dict) -> bool:
    kinds = {type(v).__name__ if not is_number(v) else "num" for v in d.values()}
    return len(kinds) == 1


def _ratio(tools: Tools, colls: list[_Coll], texts: list[str]) -> float:
    """Tokens per character, from up to SAMPLE_ITEMS evenly spaced items of each collection."""
    picks: list[str] = []
    start = 0
    for coll in colls:
        step = max(1, coll.n // SAMPLE_ITEMS)
        picks.extend(texts[start + j] for j in range(0, coll.n, step))
        start += coll.n
    sample = ",".join(picks)[:200_000]
    if not sample:
        return 0.3
    return tools.counter.count(sample) / len(sample)


def _flat(item) -> str:
    """An item's scalar values with their keys, for ranking; bounded."""
    parts: list[str] = []
    size = 0
    stack = [("", item)]
    while stack and size < SCORE_CHARS:
        key, x = stack.pop()
        if isinstance(x, dict):
            stack.extend(reversed(list(x.items())))
        elif isinstance(x, list):
            stack.extend(reversed([(key, v) for v in x]))
        elif x is not None:
            s = f"{key} {x}" if key else str(x)
            parts.append(s)
            size += len(s) + 1
    return " ".join(parts)[:SCORE_CHARS]


def _order(items, scores, colls) -> list[int]:
    """Item positions, best first: by relevance, ties (and everything, without a question) in a
    spread order of each collection (bit-reversed positions: every prefix covers the array evenly)."""
    spread = []
    for c, i in items:
        bits = max(1, (colls[c].n - 1).bit_length())
        spread.append(_bitrev(i, bits) / (1 << bits))
    if scores is None:
        return sorted(range(len(items)), key=lambda k: (spread[k], k))
    return sorted(range(len(items)), key=lambda k: (-scores[k], spread[k], k))


def _second_hop(order: list[int], scores, items, colls, labels: list[str], question: str) -> list[int]:
    """``order`` with the records the best one leads to by title (``_hops.hops``) right after it;
    records name themselves with a ``title`` or ``name`` field (search results, entities)."""
    titles = []
    for c, i in items:
        item = _item(colls[c], i)
        title = next((item[k] for k in TITLE_KEYS if isinstance(item, dict) and isinstance(item.get(k), str)), None)
        titles.append(title)
    if sum(t is not None for t in titles) < 2:
        return order
    found = hops(scores, labels, question, titles)
    if not found:
        return order
    raised = set(found)
    return [order[0], *found, *(k for k in order[1:] if k not in raised)]


def _anomalies(colls: list[_Coll]) -> list[int]:
    """Items that stand out: errors and failed statuses, rare status values, numeric outliers."""
    out: set[int] = set()
    base = 0
    for coll in colls:
        rows = [_item(coll, i) for i in range(coll.n)]
        recs = [r for r in rows if isinstance(r, dict)]
        status_values: dict[str, dict[str, int]] = {}
        numeric: dict[str, list[tuple[float, int]]] = {}
        flagged: list[int] = []  # a failure word in any short value: an anomaly if rare
        for i, r in enumerate(rows):
            if isinstance(r, str):
                if _BAD.search(r[:300]):
                    flagged.append(i)
                continue
            if not isinstance(r, dict):
                continue
            if any(isinstance(v, str) and not is_number(v) and len(v) < 300 and _BAD.search(v) for v in r.values()):
                flagged.append(i)
            for key, v in r.items():
                lk = str(key).lower()
                if lk in _ERROR_KEYS and v not in (None, "", [], {}, False):
                    out.add(base + i)
                elif lk in _OK_KEYS and v is False:
                    out.add(base + i)
                elif _STATUS_KEY.search(lk):
                    if isinstance(v, str):
                        if _BAD.search(v):
                            out.add(base + i)
                        status_values.setdefault(lk, {}).setdefault(v, 0)
                        status_values[lk][v] += 1
                    elif is_number(v) and ("status" in lk or "code" in lk):
                        try:
                            if 400 <= float(v) < 600:
                                out.add(base + i)
                        except ValueError:
                            pass
                if is_number(v):
                    try:
                        numeric.setdefault(lk, []).append((float(v), i))
                    except ValueError:
                        pass
        if len(flagged) <= max(2, 0.25 * coll.n):
            out.update(base + i for i in flagged)
        if len(recs) >= 20:
            for lk, counts in status_values.items():
                rare = {v for v, c in counts.items() if c <= 0.05 * len(recs)}
                if rare and len(counts) > 1:
                    for i, r in enumerate(rows):
                        if isinstance(r, dict) and any(
                            str(k).lower() == lk and v in rare for k, v in r.items() if isinstance(v, str)
                        ):
                            out.add(base + i)
        for _key, vals in numeric.items():
            if len(vals) < 10 or len(vals) < 0.8 * len(recs):
                continue
            xs = [v for v, _ in vals]
            med = statistics.median(xs)
            mad = statistics.median(abs(x - med) for x in xs)
            if mad <= 0 or not math.isfinite(mad):
                continue
            far = sorted(((abs(x - med) / (1.4826 * mad), i) for x, i in vals), reverse=True)
            for z, i in far[:3]:
                if z > 6:
                    out.add(base + i)
        base += coll.n
    return sorted(out)


def _prune_strings_only(value, full: str, tools: Tools, render) -> Crushed:
    """No collection to sample from: prune the long prose values, keep every key."""
    n = tools.counter.count(full)
    if n <= tools.budget or tools.prune is None:
        return Crushed(
            full,
            0,
            []
            if n <= tools.budget
            else [f"JSON without collections ({n} tokens) is over the budget ({tools.budget}); kept whole"],
        )
    targets = list(_long_strings(value, LONG_STRING // 3, 8))
    if not targets:
        return Crushed(full, 0, [f"JSON without collections or prose ({n} tokens) is over the budget; kept whole"])
    long_chars = sum(len(v) for *_, v in targets)
    rate = max(0.05, min(1.0, 1 - (len(full) - len(full) * tools.budget / n) / max(1, long_chars)))
    _prune_targets(targets, rate, tools.prune)
    return Crushed(render(value), 0, [])


def _render_kept(value, colls, items, chosen, tools: Tools, render) -> str:
    """The value with unchosen items left out and a marker in each collection that lost some.
    Collections are swapped in place for the render and restored afterwards."""
    kept_by: dict[int, list[int]] = {}
    for k in sorted(chosen):
        c, i = items[k]
        kept_by.setdefault(c, []).append(i)
    saved: list[tuple[Any, Any]] = []  # (node, its old contents): restored after counting
    for c, coll in enumerate(colls):
        idx = kept_by.get(c, [])
        gone = coll.n - len(idx)
        if gone == 0:
            continue
        note = tools.marker(f"{gone} of {coll.n} items omitted")
        if coll.keys is None:
            lst = coll.node
            saved.append((lst, list(lst)))
            new = [lst[i] for i in idx]
            new.append({MARK: note} if any(isinstance(v, dict) for v in new) or not new else note)
            lst[:] = new
        else:
            d = coll.node
            saved.append((d, dict(d)))
            new_d = {coll.keys[i]: d[coll.keys[i]] for i in idx}
            key = MARK
            while key in new_d:
                key += "_"
            new_d[key] = note
            d.clear()
            d.update(new_d)
    try:
        return render(value)
    finally:
        for node, old in saved:
            if isinstance(node, list):
                node[:] = old
            else:
                node.clear()
                node.update(old)
