"""The plan and the budget rule: what every method returns, and how many blocks it removes.

    plan = select_layers(stats, 7, method="shortgpt")      # the entry point is lorp_lightning.methods
    print(plan); plan.pruned; PruningPlan.from_json(plan.to_json())

``PruningPlan`` is the result of every method (the blocks removed, what the method read and scored, its cost, and
where it applies, its compensation and rounds), readable back from JSON. The budget rule (6), ``resolve_budget``,
turns an amount (a count of blocks, or a fraction of N rounded down) into the number of blocks, and
``protected_blocks`` the ``protect`` argument into the blocks never pruned (default {0, N-1}). The rules that
choose the blocks are elsewhere: LoRP's analysis in `lorp_lightning.locality`, the baselines that read the
statistics in `lorp_lightning.baselines`, the methods that try plans on the model (and LoRP's candidate plans) in
`lorp_lightning.search`, and the table of them all in `lorp_lightning.methods`.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from typing import Any

import numpy as np

from lorp_lightning._validation import ParameterError, is_integer, is_real

__all__ = ["PruningPlan", "format_clusters", "is_budget", "parse_budget", "protected_blocks", "resolve_budget"]


# --------------------------------------------------------------------------------------------
# the plan


def _encode_float(x: float | None) -> float | str | None:
    """JSON has no infinities or NaN: store them as the strings "inf", "-inf", "nan"."""
    if x is None or math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _compensation_floats(compensation: dict[str, Any] | None, convert: Callable[[Any], Any]) -> dict[str, Any] | None:
    """A plan's (or a round's) compensation record with its losses passed through ``convert`` (``_encode_float`` to
    write JSON, ``_decode_float`` to read it) and its factors as {int block: float factor}."""
    if compensation is None:
        return None
    out = dict(compensation, tried=[dict(t, loss=convert(t["loss"])) for t in compensation["tried"]])
    for key in ("factors", "composed"):
        if key in compensation:
            out[key] = [{"block": int(f["block"]), "factor": float(f["factor"])} for f in compensation[key]]
    if "check" in compensation:
        out["check"] = {k: convert(v) for k, v in compensation["check"].items()}
    return out


def _decode_float(x: float | str | None) -> float | None:
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"not an encoded float: {x!r}")
        return float(x)
    return float(x)


def format_clusters(labels: list[int]) -> str:
    """Cluster labels in depth order as runs, a Python expression for the labels:
    ``[0, 0, 1, 1, 1, 0] -> "[0]*2 + [1]*3 + [0]*1"`` (the one format of clusters in print)."""
    parts, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            parts.append(f"[{labels[start]}]*{i - start}")
            start = i
    return " + ".join(parts)


@dataclass
class PruningPlan:
    """Which blocks to remove, and why.

    Attributes:
        method: the method's name ([`METHODS`][lorp_lightning.methods.METHODS], or a callable's name).
        num_layers: N, the number of decoder blocks of the unpruned model.
        pruned: the blocks to remove, ascending.
        kept: the other blocks, ascending.
        protected: the blocks that were never candidates, ascending.
        rls: the Representation Locality Score (2) for ``lorp``, else None.
        num_clusters: K, the number of clusters used by ``lorp`` (from (3), or forced), else None.
        labels: ``lorp``: the cluster of every block (renumbered by first appearance), else None.
        scores: one entry per block, or None. ``lorp``: redundancy in its cluster (-inf when
            alone); ``shortgpt``: BI_l (None where not computable); ``streamline``: S[s, s+k] for
            every start s of a candidate run (None elsewhere); ``angular``: the angular distance
            arccos(S_last[s, s+k]) / pi per candidate start s; ``ppl``: the calibration loss
            with the block removed alone; the others: None.
        seed: the seed used (clustering seed for ``lorp``, draw seed for ``random``), else None.
        candidates: methods that try plans on the model: the plans tried on the way, each with
            the rule that made it and its calibration loss (``lorp_search``, ``lorp_checked``: the
            candidates of the locality analysis, then ``move i`` for each improving move;
            ``sleb``: ``step i``, the blocks removed after i steps), else None.
        cost: what the selection ran: ``statistics_windows`` (the calibration pass it read, 0 for
            methods that read only the model), ``check_windows`` (window passes of loss checks,
            compensation's included), ``plans_checked`` where plans were tried, and ``seconds``
            (selection only).
        compensation: with ``select_layers(..., compensate=True)``: the factor of the stream at each
            gap, which ``prune_layers`` folds into the kept weights (``lorp_lightning.compensation``):
            ``{"strength": s, "factors": [{"block": b, "factor": c}, ...], "tried": [{"strength":
            s, "loss": calibration loss}, ...], "check_windows": window passes of its checks}``;
            else None. A plan chosen in rounds has the factors of all its rounds composed
            (``rounds.compose_rounds``), and ``strength`` None: each round's is in ``rounds``; its
            ``"composed"`` the factors as the rounds folded them, ``"check"`` the check loss of the
            plan with them and without, and ``"factors"`` are the composed ones if they lower it,
            else all 1.
        rounds: with ``select_layers(..., rounds=R)``, R > 1: one record per round, ``{"pruned":
            the blocks it removed (original numbering), "num_layers": the depth it pruned, "rls",
            "num_clusters", "compensation": {"strength", "tried"} or None}``; else None.
    """

    method: str
    num_layers: int
    pruned: list[int]
    kept: list[int]
    protected: list[int]
    rls: float | None = None
    num_clusters: int | None = None
    labels: list[int] | None = None
    scores: list[float | None] | None = None
    seed: int | None = None
    candidates: list[dict[str, Any]] | None = None
    cost: dict[str, Any] | None = field(default=None, compare=False)  # a measurement, not part of the plan
    compensation: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] | None = None

    @property
    def num_pruned(self) -> int:
        return len(self.pruned)

    @property
    def factors(self) -> dict[int, float]:
        """The compensation's factors by block (the kept block after each gap), empty without compensation."""
        return {} if self.compensation is None else {f["block"]: f["factor"] for f in self.compensation["factors"]}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (infinities and NaN as the strings "inf", "-inf", "nan")."""
        d = asdict(self)
        d["rls"] = _encode_float(self.rls)
        d["scores"] = None if self.scores is None else [_encode_float(s) for s in self.scores]
        if self.candidates is not None:
            d["candidates"] = [dict(c, loss=_encode_float(c["loss"])) for c in self.candidates]
        d["compensation"] = _compensation_floats(self.compensation, _encode_float)
        if self.rounds is not None:
            d["rounds"] = [
                dict(r, rls=_encode_float(r["rls"]), compensation=_compensation_floats(r["compensation"], _encode_float))
                for r in self.rounds
            ]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown PruningPlan fields: {sorted(unknown)}")
        d = dict(data)
        d["rls"] = _decode_float(d.get("rls"))
        if d.get("scores") is not None:
            d["scores"] = [_decode_float(s) for s in d["scores"]]
        if d.get("candidates") is not None:
            d["candidates"] = [dict(c, loss=_decode_float(c["loss"])) for c in d["candidates"]]
        d["compensation"] = _compensation_floats(d.get("compensation"), _decode_float)
        if d.get("rounds") is not None:
            d["rounds"] = [
                dict(
                    r,
                    pruned=[int(b) for b in r["pruned"]],
                    rls=_decode_float(r["rls"]),
                    compensation=_compensation_floats(r["compensation"], _decode_float),
                )
                for r in d["rounds"]
            ]
        for key in ("pruned", "kept", "protected", "labels"):
            if d.get(key) is not None:
                d[key] = [int(x) for x in d[key]]
        return cls(**d)

    def to_json(self, indent: int | None = None) -> str:
        """Strict JSON (no Infinity/NaN literals); `from_json` restores an equal plan."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        s = f"{self.method}: prune {len(self.pruned)} of {self.num_layers} blocks {self.pruned}"
        if self.rls is not None:
            s += f"; RLS {self.rls:.3f}"
        if self.num_clusters is not None:
            s += f", K {self.num_clusters}"
        if self.labels is not None:
            s += f", clusters {format_clusters(self.labels)}"
        s += f"; protected {self.protected}"
        if self.seed is not None:
            s += f"; seed {self.seed}"
        if self.rounds is not None:
            s += f"; in {len(self.rounds)} rounds " + ", ".join(str(r["pruned"]) for r in self.rounds)
        if self.compensation is not None:
            factors = ", ".join(f"{f['block']}: {f['factor']:.3f}" for f in self.compensation["factors"])
            strength = self.compensation["strength"]
            if strength is None:  # in rounds: each round's strength, kept if the composed factors lower the check loss
                strength = "/".join(f"{r['compensation']['strength']:g}" for r in self.rounds)
                s += f"; compensated, strengths {strength}"
                if all(f["factor"] == 1.0 for f in self.compensation["factors"]):
                    s += " (composed, they did not lower the check loss: factors 1)"
            else:
                s += f"; compensated, strength {strength:g}"
            s += f" (factors {factors})" if any(f["factor"] != 1.0 for f in self.compensation["factors"]) else ""
        return s


# --------------------------------------------------------------------------------------------
# (6) the budget rule, and the protected blocks


def is_budget(value: Any) -> bool:
    """(6) The budget rule every entry point shares: a count, an int >= 1 (NumPy ints included, not
    a bool), or a fraction, a float in (0, 1). ``3.0`` is neither: a float is always a fraction."""
    if is_integer(value):
        return value >= 1
    return is_real(value) and 0.0 < float(value) < 1.0


def parse_budget(text: str) -> int | float:
    """A budget as written on a command line, read as Python reads a number: "3" is the int 3 (blocks), "0.25" and
    "3.0" are floats (``is_budget`` then refuses "3.0", a float that is no fraction)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def resolve_budget(num_prune: Any, num_layers: int, num_unprotected: int) -> int:
    """(6) The number of blocks to prune.

    An int is a count of blocks. A float in (0, 1) is a fraction of N = ``num_layers``, rounded
    down (never prune more than asked); the float is read as the decimal it prints as, so
    0.29 of 100 is 29 although ``0.29 * 100 == 28.999999999999996``. A bool is not a count.
    The result must be >= 1 and <= ``num_unprotected``, else a ValueError naming both numbers.
    """
    if is_integer(num_prune):
        k = int(num_prune)
        asked = f"num_prune={k}"
    elif isinstance(num_prune, numbers.Real) and not isinstance(num_prune, (bool, np.bool_)):
        x = float(num_prune)
        if not (0.0 < x < 1.0):  # also rejects NaN
            raise ParameterError(
                "num_prune", f"num_prune as a float must be a fraction in (0, 1) of the {num_layers} blocks, got {num_prune!r}"
            )
        k = math.floor(Fraction(repr(x)) * num_layers)  # (6) rounded down
        asked = f"num_prune={x!r} of {num_layers} blocks rounds down to {k} blocks and"
    else:
        raise ParameterError(
            "num_prune", f"num_prune must be an int (a count) or a float in (0, 1) (a fraction), got {num_prune!r}"
        )
    if k < 1:
        raise ParameterError("num_prune", f"{asked} is fewer than 1; prune at least 1 block")
    if k > num_unprotected:
        raise ParameterError(
            "num_prune",
            f"{asked} exceeds the {num_unprotected} unprotected blocks (of {num_layers}); prune fewer or protect fewer",
        )
    return k


def protected_blocks(protect: Iterable[int] | None, N: int) -> set[int]:
    """The blocks never pruned: ``protect`` checked against N, or {0, N-1} when it is None."""
    if protect is None:
        return {0, N - 1}
    if isinstance(protect, (str, bytes)) or not isinstance(protect, Iterable):
        raise ParameterError("protect", f"protect must be an iterable of block indices, got {protect!r}")
    out = set()
    for p in protect:
        if not is_integer(p) or not 0 <= p < N:
            raise ParameterError("protect", f"protect holds {p!r}, which is not a block index in 0..{N - 1}")
        out.add(int(p))
    return out
