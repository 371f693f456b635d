"""Finite groups as permutation groups: elements, multiplication table, element orders, names.

Tables are computed from permutations (never typed in), so a test can check the group axioms.
Convention: element i is a permutation p_i of {0..n-1} in one-line notation, and the product
p_i . p_j is the composition (p_i . p_j)(k) = p_i(p_j(k)). Element 0 is the identity.

The groups of Merrill, Petty & Sabharwal 2024 ("The Illusion of State in State-Space Models"):
A5 (order 60, the smallest non-solvable group), S5 (order 120, non-solvable), and two solvable
groups of order 60 as controls, A4 x Z5 and Z60.
"""

from __future__ import annotations

import itertools

import numpy as np


def parity(perm: tuple[int, ...]) -> int:
    """0 for an even permutation, 1 for an odd one (count of inversions mod 2)."""
    return sum(perm[i] > perm[j] for i in range(len(perm)) for j in range(i + 1, len(perm))) % 2


def symmetric_group(n: int) -> list[tuple[int, ...]]:
    """All n! permutations, identity first (lexicographic order)."""
    return list(itertools.permutations(range(n)))


def alternating_group(n: int) -> list[tuple[int, ...]]:
    """The n!/2 even permutations, identity first."""
    return [p for p in symmetric_group(n) if parity(p) == 0]


def cyclic_group(n: int) -> list[tuple[int, ...]]:
    """Z_n as the rotations k -> k + s (mod n) of n points; element s is the s-th power of the
    generator, so elements[i] . elements[j] = elements[(i + j) % n]."""
    return [tuple((k + shift) % n for k in range(n)) for shift in range(n)]


def direct_product(left: list[tuple[int, ...]], right: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """G x H acting on the disjoint union of their points (H's points shifted past G's); the
    pair (g, h) is at index i * |H| + j, so the identity stays first."""
    shift = len(left[0])
    return [g + tuple(shift + k for k in h) for g in left for h in right]


def cycle_notation(perm: tuple[int, ...]) -> str:
    """The permutation's name in cycle notation, fixed points left out: "(0 1 2)(3 4)"; "e" for
    the identity."""
    seen, cycles = set(), []
    for start in range(len(perm)):
        if start in seen or perm[start] == start:
            continue
        cycle, k = [], start
        while k not in seen:
            seen.add(k)
            cycle.append(k)
            k = perm[k]
        cycles.append("(" + " ".join(map(str, cycle)) + ")")
    return "".join(cycles) or "e"


def multiplication_table(elements: list[tuple[int, ...]]) -> np.ndarray:
    """table[i, j] = index of elements[i] . elements[j] (composition, right factor applied first)."""
    index = {p: i for i, p in enumerate(elements)}
    table = np.empty((len(elements), len(elements)), dtype=np.int64)
    for i, p in enumerate(elements):
        for j, q in enumerate(elements):
            product = tuple(p[k] for k in q)
            if product not in index:
                raise ValueError(f"elements are not closed under composition: {p} . {q} = {product}")
            table[i, j] = index[product]
    return table


def element_orders(table: np.ndarray, identity: int = 0) -> np.ndarray:
    """Order of each element: the least k >= 1 with g^k = identity."""
    orders = np.zeros(len(table), dtype=np.int64)
    for g in range(len(table)):
        power, k = g, 1
        while power != identity:
            power, k = table[power, g], k + 1
        orders[g] = k
    return orders


def running_products(words: np.ndarray, table: np.ndarray) -> np.ndarray:
    """targets[:, t] = words[:, 0] . words[:, 1] . ... . words[:, t] (vectorised over the batch)."""
    out = np.empty_like(words)
    out[:, 0] = words[:, 0]
    for t in range(1, words.shape[1]):
        out[:, t] = table[out[:, t - 1], words[:, t]]
    return out


GROUPS = {
    "A5": lambda: alternating_group(5),
    "S5": lambda: symmetric_group(5),
    "A4xZ5": lambda: direct_product(alternating_group(4), cyclic_group(5)),
    # Z3 x Z4 x Z5 is Z60 (Chinese remainder theorem) on 12 points instead of 60: short names
    "Z60": lambda: direct_product(direct_product(cyclic_group(3), cyclic_group(4)), cyclic_group(5)),
}
