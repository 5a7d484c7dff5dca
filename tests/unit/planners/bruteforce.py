"""Exhaustive reference solver for small instances: every ordered device subset × every cut set.

Independent of the DP: it enumerates plans explicitly and evaluates §4 with numpy, using the same
float expressions as CostModel so objective values compare exactly.
"""

from __future__ import annotations

import itertools
from math import comb, perm

import numpy as np

from edgesplit.core.cost import CostModel


def num_plans(num_devices: int, num_units: int) -> int:
    return sum(
        perm(num_devices, k) * comb(num_units - 1, k - 1)
        for k in range(1, min(num_devices, num_units) + 1)
    )


def brute_force(cost: CostModel, objective: str) -> float:
    """Best period (or latency) over all feasible pipelines; inf when none fits."""
    cluster = cost.cluster
    num_units = cost.num_units
    names = list(cluster.device_names)
    outputs = cost.output_bytes
    params = cost.param_prefix
    in_bytes = np.concatenate([[cost.profile.input_bytes], outputs[:-1]])
    best = np.inf
    for k in range(1, min(len(names), num_units) + 1):
        combos = list(itertools.combinations(range(1, num_units), k - 1))
        inner = np.array(combos, dtype=np.int64).reshape(len(combos), k - 1)
        cuts = np.hstack(
            [np.zeros((len(inner), 1), np.int64), inner, np.full((len(inner), 1), num_units)]
        )
        for sequence in itertools.permutations(names, k):
            feasible = np.ones(len(cuts), dtype=bool)
            parts = []
            for i, device in enumerate(sequence):
                a, b = cuts[:, i], cuts[:, i + 1]
                prefix = cost.time_prefix(cluster.device(device).kind)
                # CostModel.compute_s: the units plus the device's per-stage runtime cost.
                parts.append((prefix[b] - prefix[a]) + cluster.device(device).stage_overhead_s)
                memory = params[b] - params[a] + 2.0 * (in_bytes[a] + outputs[b - 1])
                feasible &= memory <= cluster.device(device).memory_bytes
                if i + 1 < k:
                    nxt = sequence[i + 1]
                    bandwidth, latency = cluster.link(device, nxt)
                    parts.append(latency + outputs[b - 1] / bandwidth)
            first = cost.transfer_s(cost.profile.input_bytes, cluster.source, sequence[0])
            last = cost.transfer_s(float(outputs[-1]), sequence[-1], cluster.source)
            if objective == "throughput":
                value = np.full(len(cuts), max(first, last))
                for part in parts:
                    value = np.maximum(value, part)
            else:
                value = np.full(len(cuts), first)
                for part in parts:
                    value = value + part
                value = value + last
            value = np.where(feasible, value, np.inf)
            best = min(best, float(value.min()))
    return best
