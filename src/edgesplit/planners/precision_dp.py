"""Stage dtypes and link encodings chosen jointly with the partition, under a quality budget.

`solve_joint` is the exact planner behind `make_plan(..., precision=PrecisionChoices(...))` when
more than one dtype or link encoding is allowed (issue 17). It keeps the class-count DP of
planners.pipeline_dp (devices of one class are interchangeable) and adds, per stage, a dtype
(compute and weight bytes from the profile's per-dtype figures) and the encoding of its output
link (wire bytes: core.precision.encoded_bytes), with the predicted quality loss of
core.quality.QualityTable (additive: per stage and per cut) bounded by `max_quality_loss`.
Imports core only (numpy, no torch/ray).

[Note: joint precision DP] A stage's memory holds its weights in its dtype and the wire bytes of
both its links (core.cost [Note: precision in the cost model]), so a stage's fit depends on the
encoding of the link *into* it and of its own link out. The DP state is therefore (units covered
a, count vector n, last stage's class c, that stage's out-encoding e); a step is "cut at a with
e, then a stage [a, b) on class c' in dtype t with out-encoding e'" (e' is float32 for the last
stage: the model's output always returns as float32).

- throughput: the period of any plan is one of finitely many numbers (an input/output transfer,
  a stage's compute in some dtype, a hop under some encoding). For a threshold tau the DP keeps
  only elements <= tau and minimises the *quality loss*; a plan with period <= tau and loss <=
  budget exists iff that minimum is <= budget, which is monotone in tau. Bisection over the
  sorted candidates yields the least feasible one, which is the optimal period exactly.
- latency without a budget: the DP minimises the left-folded sum in + c1 + h1 + ... + out in
  the cost model's order, so the plan's `CostModel.predict` latency equals it bitwise.
- latency with a budget: labels are Pareto sets of (latency, loss) per state (exact; pure
  Python, so it is refused above `PARETO_WORK_LIMIT`).
Worked example: 2 units, devices A (source), B; dtypes {float32, int8}, int8 loss 1 % of the
whole model, budget 0.6 %, unit 0 holding half the weights: int8 on [0, 1) costs 0.5 % and fits
the budget, int8 on both units costs 1 % and does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgesplit.core.cost import CostModel
from edgesplit.core.plan import Objective, StagePlacement
from edgesplit.core.precision import LinkEncoding, StageDtype
from edgesplit.core.quality import QualityTable
from edgesplit.errors import ConfigError, PlanInfeasibleError
from edgesplit.planners.base import PlannerResult, PrecisionChoices
from edgesplit.planners.pipeline_dp import device_classes

__all__ = ["solve_joint"]

WORK_LIMIT = 8_000_000  # entries of the (position, vector, class, encoding) table
PARETO_WORK_LIMIT = 200_000  # states x options for the latency-with-budget label DP
LOSS_TOLERANCE = 1e-9  # a predicted loss within this of the budget counts as within it
INF = np.inf


@dataclass(frozen=True, slots=True)
class _Tables:
    """Every number the DP reads, built once with the cost model's own float expressions."""

    classes: tuple[tuple[str, ...], ...]
    dtypes: tuple[StageDtype, ...]
    encodings: tuple[LinkEncoding, ...]  # axis of encodings; index f32 is float32
    f32: int
    compute: np.ndarray  # (K, T, L+1, L+1) seconds, inf where b <= a
    fits: np.ndarray  # (K, T, L+1, L+1, E, E) memory fits (in-encoding, out-encoding)
    stage_loss: np.ndarray  # (T, L+1, L+1) quality loss of a stage [a, b) in dtype t
    link_loss: np.ndarray  # (L+1, E) loss of the cut at a under encoding e (inf: not allowed)
    hop: np.ndarray  # (K, K, L+1, E) seconds from class c to class c' at cut a
    in_s: np.ndarray  # (K,) source -> class
    out_s: np.ndarray  # (K,) class -> source
    counts: np.ndarray  # (K,) devices per class
    strides: np.ndarray  # (K,) mixed-radix strides of count vectors

    @property
    def num_units(self) -> int:
        return int(self.compute.shape[2]) - 1

    @property
    def num_vectors(self) -> int:
        return int(np.prod(self.counts + 1))


def _tables(
    cost: CostModel, choices: PrecisionChoices, classes: tuple[tuple[str, ...], ...]
) -> _Tables:
    cluster = cost.cluster
    dtypes = tuple(choices.dtypes)
    allowed = tuple(choices.link_encodings)
    encodings: tuple[LinkEncoding, ...] = allowed if "float32" in allowed else (*allowed, "float32")
    f32 = encodings.index("float32")
    num_units = cost.num_units
    positions = np.arange(num_units + 1)
    below = positions[None, :] <= positions[:, None]  # b <= a
    compute = np.full((len(classes), len(dtypes), num_units + 1, num_units + 1), INF)
    for k, group in enumerate(classes):
        for t, dtype in enumerate(dtypes):
            # cost.compute_s itself (not the prefix arrays), so every term the cost model adds
            # to a stage's compute is here too and plans re-evaluate to the DP's value bitwise.
            for a in range(num_units):
                for b in range(a + 1, num_units + 1):
                    compute[k, t, a, b] = cost.compute_s(group[0], a, b, dtype)
    # Wire bytes into a stage starting at a / out of a stage ending at b, per encoding.
    nan = float("nan")
    wire_in = np.full((num_units + 1, len(encodings)), nan)
    wire_out = np.full((num_units + 1, len(encodings)), nan)
    wire_in[0, f32] = cost.profile.input_bytes
    for e, encoding in enumerate(encodings):
        for a in range(1, num_units):
            if encoding in allowed:
                wire_in[a, e] = wire_out[a, e] = cost.wire_bytes(a, encoding)
    wire_out[num_units, f32] = cost.wire_bytes(num_units, "float32")
    capacity = np.array([cluster.device(g[0]).memory_bytes for g in classes])
    shape = (
        len(classes),
        len(dtypes),
        num_units + 1,
        num_units + 1,
        len(encodings),
        len(encodings),
    )
    fits = np.zeros(shape, dtype=bool)
    buffers = wire_in[:, None, :, None] + wire_out[None, :, None, :]  # (a, b, ei, eo); nan: n/a
    for t, dtype in enumerate(dtypes):
        params = cost.params_prefix(dtype)
        # The cost model's expression: params + 2.0 * (in + out); nan compares False.
        need = (params[None, :] - params[:, None])[:, :, None, None] + 2.0 * buffers
        need[below] = np.nan
        for k in range(len(classes)):
            fits[k, t] = need <= capacity[k]
    stage_loss, link_loss = _losses(cost, choices, dtypes, encodings, allowed)
    hop = np.full((len(classes), len(classes), num_units + 1, len(encodings)), INF)
    for k, group in enumerate(classes):
        for k2, group2 in enumerate(classes):
            if k == k2 and len(group) < 2:
                continue
            src, dst = group[0], (group2[1] if k == k2 else group2[0])
            for a in range(1, num_units):
                for e in range(len(encodings)):
                    if not np.isnan(wire_out[a, e]):
                        hop[k, k2, a, e] = cost.transfer_s(float(wire_out[a, e]), src, dst)
    source = cluster.source
    in_s = np.array([cost.transfer_s(cost.profile.input_bytes, source, g[0]) for g in classes])
    final = cost.wire_bytes(num_units, "float32")
    out_s = np.array([cost.transfer_s(final, g[0], source) for g in classes])
    counts = np.array([len(g) for g in classes], dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(counts + 1)[:-1]]).astype(np.int64)
    return _Tables(
        classes,
        dtypes,
        encodings,
        f32,
        compute,
        fits,
        stage_loss,
        link_loss,
        hop,
        in_s,
        out_s,
        counts,
        strides,
    )


def _losses(
    cost: CostModel,
    choices: PrecisionChoices,
    dtypes: tuple[StageDtype, ...],
    encodings: tuple[LinkEncoding, ...],
    allowed: tuple[LinkEncoding, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """(stage_loss (T, L+1, L+1), link_loss (L+1, E)) under the quality table, 0 without one."""
    num_units = cost.num_units
    stage_loss = np.zeros((len(dtypes), num_units + 1, num_units + 1))
    link_loss = np.zeros((num_units + 1, len(encodings)))
    for e, encoding in enumerate(encodings):
        if encoding not in allowed:
            link_loss[1:num_units, e] = INF
    table = choices.quality
    if table is None:
        # No table, no budget: a tie-break only. Among plans of the optimal period the DP keeps
        # the fewest non-float32 stages and links (the budget is infinite, so this changes no
        # period, and latency plans do not read it).
        for t, dtype in enumerate(dtypes):
            stage_loss[t] = float(dtype != "float32")
        for e, encoding in enumerate(encodings):
            link_loss[1:num_units, e] += float(encoding != "float32")
        return stage_loss, link_loss
    weights = np.concatenate([[0.0], np.cumsum(np.asarray(table.unit_param_bytes, float))])
    share = (weights[None, :] - weights[:, None]) / (weights[-1] or 1.0)
    for t, dtype in enumerate(dtypes):
        stage_loss[t] = table.dtype_loss(dtype) * share
    for e, encoding in enumerate(encodings):
        for a in range(1, num_units):
            if encoding in allowed:
                link_loss[a, e] = table.link_loss(a, encoding)
    # Tie-break among plans of equal loss (e.g. int8 measured free): the fewest non-float32
    # stages and links. At most 2 L of these, together < LOSS_TOLERANCE / 10, so no plan within
    # the budget is lost.
    nudge = LOSS_TOLERANCE / (20.0 * (num_units + 1))
    for t, dtype in enumerate(dtypes):
        stage_loss[t] += nudge * float(dtype != "float32")
    for e, encoding in enumerate(encodings):
        link_loss[1:num_units, e] += nudge * float(encoding != "float32")
    return stage_loss, link_loss


def _next_ids(tables: _Tables) -> np.ndarray:
    """(V, K): the id of vector n + e_k, or -1 when class k is used up."""
    vectors = np.arange(tables.num_vectors)
    used = (vectors[:, None] // tables.strides[None, :]) % (tables.counts[None, :] + 1)
    nxt = vectors[:, None] + tables.strides[None, :]
    return np.where(used < tables.counts[None, :], nxt, -1)


@dataclass
class _Run:
    """One DP pass: values and back-pointers (see [Note: joint precision DP])."""

    value: np.ndarray  # F (L+1, V, K, E)
    arrived: np.ndarray  # A (L+1, V, K, E): before the stage that starts at a
    from_class: np.ndarray  # A's predecessor class (-1: the source)
    from_start: np.ndarray  # F's stage start a
    from_encoding: np.ndarray  # F's in-encoding
    from_dtype: np.ndarray  # F's dtype index


def _run(tables: _Tables, tau: float | None) -> _Run:
    """tau given: minimise loss over elements <= tau; None: minimise latency (no budget)."""
    num_units, num_vectors = tables.num_units, tables.num_vectors
    num_classes, num_enc = len(tables.classes), len(tables.encodings)
    shape = (num_units + 1, num_vectors, num_classes, num_enc)
    value = np.full(shape, INF)
    arrived = np.full(shape, INF)
    from_class = np.full(shape, -1, dtype=np.int32)
    from_start = np.full(shape, -1, dtype=np.int32)
    from_encoding = np.full(shape, -1, dtype=np.int32)
    from_dtype = np.full(shape, -1, dtype=np.int32)
    next_ids = _next_ids(tables)
    latency = tau is None
    # Per stage (class, a, b, in-encoding, out-encoding): the best dtype's value.
    if latency:
        per_dtype = np.where(tables.fits, tables.compute[..., None, None], INF)
    else:
        allowed = tables.fits & (tables.compute <= tau)[..., None, None]
        per_dtype = np.where(allowed, tables.stage_loss[None, :, :, :, None, None], INF)
    best_dtype = per_dtype.argmin(axis=1)  # (K, L+1, L+1, E, E)
    best = np.take_along_axis(per_dtype, best_dtype[:, None], axis=1)[:, 0]
    hop = tables.hop if latency else np.where(tables.hop <= tau, tables.hop, INF)
    for k in range(num_classes):
        if latency:
            arrived[0, 0, k, tables.f32] = tables.in_s[k]
        elif tables.in_s[k] <= tau:
            arrived[0, 0, k, tables.f32] = 0.0
    for a in range(num_units):
        if a > 0:
            here = value[a]  # (V, K, E)
            if latency:
                # (V, K, 1, E) + (1, K, K', E) -> min over the previous class.
                total = here[:, :, None, :] + hop[None, :, :, a, :]
            else:
                reach = np.isfinite(hop[:, :, a, :])  # (K, K', E)
                total = np.where(reach[None], here[:, :, None, :], INF)
                total = total + tables.link_loss[a][None, None, None, :]
            arrived[a] = total.min(axis=1)
            from_class[a] = total.argmin(axis=1)
        for k in range(num_classes):
            entering = arrived[a, :, k, :]  # (V, E)
            targets = next_ids[:, k]
            rows = np.flatnonzero((targets >= 0) & np.isfinite(entering).any(axis=1))
            if rows.size == 0:
                continue
            entering = entering[rows]
            for b in range(a + 1, num_units + 1):
                stage = best[k, a, b]  # (E_in, E_out)
                if not latency and not (tables.compute[k, :, a, b] <= tau).any():
                    break  # compute only grows with b
                if not np.isfinite(stage).any():
                    continue
                candidate = entering[:, :, None] + stage[None]  # (rows, E_in, E_out)
                chosen = candidate.argmin(axis=1)
                new = np.take_along_axis(candidate, chosen[:, None], axis=1)[:, 0]
                cell = value[b, targets[rows], k]
                better = new < cell
                if not better.any():
                    continue
                r, e = np.nonzero(better)
                ids = targets[rows][r]
                value[b, ids, k, e] = new[r, e]
                ein = chosen[r, e]
                from_start[b, ids, k, e] = a
                from_encoding[b, ids, k, e] = ein
                from_dtype[b, ids, k, e] = best_dtype[k, a, b, ein, e]
    return _Run(value, arrived, from_class, from_start, from_encoding, from_dtype)


def _finish(tables: _Tables, run: _Run, tau: float | None) -> tuple[float, int, int]:
    """(best final value, vector id, class): loss (tau given) or latency incl. the output."""
    final = run.value[tables.num_units, :, :, tables.f32]  # (V, K)
    if tau is None:
        total = final + tables.out_s[None, :]
    else:
        total = np.where(tables.out_s[None, :] <= tau, final, INF)
    flat = int(total.argmin())
    vector, k = divmod(flat, total.shape[1])
    return float(total[vector, k]), vector, k


def _backtrack(
    tables: _Tables, run: _Run, vector: int, k: int
) -> list[tuple[int, int, int, int, int]]:
    """[(class, dtype index, start, end, out-encoding), ...] in pipeline order."""
    stages = []
    b, e = tables.num_units, tables.f32
    while b > 0:
        a = int(run.from_start[b, vector, k, e])
        ein = int(run.from_encoding[b, vector, k, e])
        stages.append((k, int(run.from_dtype[b, vector, k, e]), a, b, e))
        vector -= int(tables.strides[k])
        k_prev = int(run.from_class[a, vector, k, ein])
        b, e, k = a, ein, k_prev
    stages.reverse()
    return stages


def _placements(
    tables: _Tables, solution: list[tuple[int, int, int, int, int]]
) -> tuple[StagePlacement, ...]:
    taken = [0] * len(tables.classes)
    stages = []
    for k, t, a, b, e in solution:
        device = tables.classes[k][taken[k]]
        taken[k] += 1
        stages.append(
            StagePlacement(
                device=device,
                start=a,
                end=b,
                dtype=tables.dtypes[t],
                link_encoding=tables.encodings[e],
            )
        )
    return tuple(stages)


def _period_candidates(tables: _Tables) -> np.ndarray:
    values = [
        tables.in_s,
        tables.out_s,
        tables.compute[np.isfinite(tables.compute) & tables.fits.any(axis=(-1, -2))],
        tables.hop[np.isfinite(tables.hop)],
    ]
    return np.unique(np.concatenate([np.ravel(v) for v in values]))


def _budget(choices: PrecisionChoices) -> float:
    if choices.max_quality_loss is None:
        return INF
    return choices.max_quality_loss + LOSS_TOLERANCE


def solve_joint(cost: CostModel, objective: Objective, choices: PrecisionChoices) -> PlannerResult:
    """The optimal plan over partitions, stage dtypes and link encodings ([Note: joint
    precision DP]); PlanInfeasibleError when nothing fits memory and the quality budget."""
    if choices.max_quality_loss is not None and choices.quality is None:
        raise ConfigError("a quality budget needs a quality table (--quality TABLE.json)")
    classes = tuple(c.devices for c in device_classes(cost))
    num_encodings = len(set(choices.link_encodings) | {"float32"})
    vectors = math.prod(len(g) + 1 for g in classes)  # Python ints: no overflow
    work = (cost.num_units + 1) * vectors * len(classes) * num_encodings
    if work > WORK_LIMIT:
        raise ConfigError(
            f"joint dtype planning over {len(classes)} device classes needs a table of "
            f"{work:,} entries (limit {WORK_LIMIT:,}); give one --dtype and one --link-encoding "
            "(every planner handles a single precision), or plan for fewer distinct devices"
        )
    tables = _tables(cost, choices, classes)
    budget = _budget(choices)
    info: list[tuple[str, str | int | float | bool]] = [
        ("engine", "joint-dp"),
        ("exact", True),
        ("num_classes", len(tables.classes)),
        ("dtypes", ",".join(choices.dtypes)),
        ("link_encodings", ",".join(choices.link_encodings)),
    ]
    if choices.max_quality_loss is not None:
        info.append(("max_quality_loss", choices.max_quality_loss))
    if objective == "latency":
        if np.isfinite(budget) and choices.quality is not None:
            value, solution = _pareto_latency(tables, budget)
        else:
            run = _run(tables, None)
            value, vector, k = _finish(tables, run, None)
            solution = _backtrack(tables, run, vector, k) if np.isfinite(value) else []
        if not solution:
            raise _infeasible(cost, choices)
        return PlannerResult(_placements(tables, solution), True, value, tuple(info))
    candidates = _period_candidates(tables)
    lo, hi = 0, len(candidates) - 1
    found: tuple[_Run, int, int] | None = None
    best_tau = INF
    if hi < 0:
        raise _infeasible(cost, choices)
    run = _run(tables, float(candidates[hi]))
    loss, vector, k = _finish(tables, run, float(candidates[hi]))
    if not (np.isfinite(loss) and loss <= budget):
        raise _infeasible(cost, choices)
    found, best_tau = (run, vector, k), float(candidates[hi])
    passes = 1
    while lo < hi:
        mid = (lo + hi) // 2
        tau = float(candidates[mid])
        run = _run(tables, tau)
        passes += 1
        loss, vector, k = _finish(tables, run, tau)
        if np.isfinite(loss) and loss <= budget:
            hi, found, best_tau = mid, (run, vector, k), tau
        else:
            lo = mid + 1
    assert found is not None
    info.append(("dp_passes", passes))
    solution = _backtrack(tables, *found)
    return PlannerResult(_placements(tables, solution), True, best_tau, tuple(info))


def _pareto_latency(
    tables: _Tables, budget: float
) -> tuple[float, list[tuple[int, int, int, int, int]]]:
    """Latency under a loss budget: Pareto labels (latency, loss) per state, exact."""
    num_units = tables.num_units
    num_classes, num_enc = len(tables.classes), len(tables.encodings)
    work = tables.num_vectors * num_classes * num_enc * num_units * num_units * num_classes
    if work > PARETO_WORK_LIMIT:
        raise ConfigError(
            f"latency under a quality budget is planned with Pareto labels, limited to "
            f"{PARETO_WORK_LIMIT:,} steps ({work:,} here); plan --objective throughput, or give "
            "one --dtype and one --link-encoding"
        )
    # A label: (latency, loss, parent label or None, (class, dtype, a, b, out-encoding)).
    Label = tuple[float, float, object, tuple[int, int, int, int, int] | None]
    states: dict[tuple[int, int, int, int], list[Label]] = {}
    next_ids = _next_ids(tables)

    def add(key: tuple[int, int, int, int], label: Label) -> None:
        front = states.setdefault(key, [])
        if any(o[0] <= label[0] and o[1] <= label[1] for o in front):
            return
        front[:] = [o for o in front if not (label[0] <= o[0] and label[1] <= o[1])]
        front.append(label)

    def stages_from(a: int, vector: int, k_prev: int, e_in: int, label: Label) -> None:
        for k in range(num_classes):
            target = int(next_ids[vector, k])
            if target < 0:
                continue
            if a == 0:
                start_latency, start_loss = float(tables.in_s[k]), 0.0
            else:
                hop = float(tables.hop[k_prev, k, a, e_in])
                if not np.isfinite(hop):
                    continue
                start_latency = label[0] + hop
                start_loss = label[1] + float(tables.link_loss[a, e_in])
            for b in range(a + 1, num_units + 1):
                for t in range(len(tables.dtypes)):
                    compute = float(tables.compute[k, t, a, b])
                    loss = start_loss + float(tables.stage_loss[t, a, b])
                    if loss > budget:
                        continue
                    for e in range(num_enc):
                        if b == num_units and e != tables.f32:
                            continue
                        if not tables.fits[k, t, a, b, e_in, e]:
                            continue
                        step = (k, t, a, b, e)
                        add((b, target, k, e), (start_latency + compute, loss, label, step))

    stages_from(0, 0, -1, tables.f32, (0.0, 0.0, None, None))
    for a in range(1, num_units):
        for key in sorted(k for k in states if k[0] == a):
            for label in list(states.get(key, [])):
                stages_from(a, key[1], key[2], key[3], label)
    best: tuple[float, Label] | None = None
    for key, front in states.items():
        if key[0] != num_units or key[3] != tables.f32:
            continue
        for label in front:
            total = label[0] + float(tables.out_s[key[2]])
            if best is None or total < best[0]:
                best = (total, label)
    if best is None:
        return INF, []
    steps = []
    node: Label | None = best[1]
    while node is not None:
        parent, step = node[2], node[3]
        if step is not None:
            steps.append(step)
        node = parent  # type: ignore[assignment]  # a Label or None (see `add`)
    steps.reverse()
    return best[0], steps


def _infeasible(cost: CostModel, choices: PrecisionChoices) -> PlanInfeasibleError:
    budget = (
        ""
        if choices.max_quality_loss is None
        else (f" within a quality loss of {choices.max_quality_loss:g}")
    )
    total = min(float(cost.params_prefix(d)[-1]) for d in choices.dtypes)
    memory = sum(d.memory_bytes for d in cost.cluster.devices)
    return PlanInfeasibleError(
        f"no placement of '{cost.profile.model}' in dtypes {list(choices.dtypes)} with link "
        f"encodings {list(choices.link_encodings)} fits{budget}: the smallest weights need "
        f"{total / 1e6:.1f} MB (plus activation buffers) and the {len(cost.cluster.devices)} "
        f"devices have {memory / 1e6:.1f} MB; allow a smaller dtype, a larger quality loss, "
        "or add devices",
        shortfall_bytes=max(0.0, total - memory) or None,
    )


def table_matches(table: QualityTable, cost: CostModel) -> None:
    """ConfigError unless `table` was measured for a model with the profile's unit count."""
    if table.num_units != cost.num_units:
        raise ConfigError(
            f"quality table of '{table.model}' has {table.num_units} units but the profile of "
            f"'{cost.profile.model}' has {cost.num_units}; measure the table with the same "
            "unit granularity (edgesplit quality)"
        )
