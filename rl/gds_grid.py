"""Grid-world dynamic MDPs for GDS: moving hazards, time-windowed costs, optional slip.

    from rl import gds_grid
    grid = gds_grid.Grid(4, 4)
    cost = gds_grid.hazard_cost(grid, T=6, patrols=[[(0, 2), (3, 2)]], windows=[((1, 1), 2, 4)])
    mdp = gds_grid.grid_dmdp(grid, cost, gamma=0.9, slip=0.2)   # DMDP (dense P)
    det = gds_grid.grid_dmdp(grid, cost, gamma=0.9, sparse=True)  # DetDMDP (nxt[S, A]), large grids

Actions are up, down, left, right, stay; a move into a wall or off the grid stays put. With
``slip = p`` a move goes to one of its two perpendicular neighbours with probability p/2 each
(blocked => stay); "stay" never slips. [inferred] Perpendicular slip with walls can make reaching
infeasible at any horizon (a branch that always slips never progresses), so ``slip_mode="wind"``
(after its move the agent is blown one more cell east w.p. ``slip``) is offered for reach tasks.
[inferred] Rewards are occupancy costs, ``r_t(s, a) = -(step_cost + cost[t, s])``: being in a
hazard cell at time t costs ``hazard``. A patrol hazard walks back and forth along a straight
segment, one cell per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rl.gds import DMDP, DetDMDP

ACTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1), (0, 0))
NAMES = ("up", "down", "left", "right", "stay")
STAY = 4
_PERP = {0: (2, 3), 1: (2, 3), 2: (0, 1), 3: (0, 1)}
Cell = tuple[int, int]


@dataclass(frozen=True)
class Grid:
    """An ``h x w`` grid; states are ``i * w + j``; ``walls`` are blocked cells."""

    h: int
    w: int
    walls: frozenset[Cell] = frozenset()

    def __post_init__(self) -> None:
        if self.h < 1 or self.w < 1:
            raise ValueError(f"grid must be at least 1x1, got {self.h}x{self.w}")
        object.__setattr__(self, "walls", frozenset(map(tuple, self.walls)))

    @property
    def S(self) -> int:
        return self.h * self.w

    def idx(self, cell: Cell) -> int:
        i, j = cell
        if not (0 <= i < self.h and 0 <= j < self.w):
            raise ValueError(f"cell {cell} is outside the {self.h}x{self.w} grid")
        return i * self.w + j

    def cell(self, s: int) -> Cell:
        return divmod(int(s), self.w)

    def _move(self, s: int, a: int) -> int:
        i, j = self.cell(s)
        di, dj = ACTIONS[a]
        c = (i + di, j + dj)
        ok = 0 <= c[0] < self.h and 0 <= c[1] < self.w and c not in self.walls
        return self.idx(c) if ok else s

    def next_states(self) -> np.ndarray:
        """``nxt[S, 5]``: the deterministic successor of every (state, action)."""
        return np.array([[self._move(s, a) for a in range(len(ACTIONS))] for s in range(self.S)])

    def transitions(self, slip: float = 0.0, mode: str = "perpendicular") -> np.ndarray:
        """Dense ``P[S, 5, S]``. ``perpendicular``: a move slips sideways w.p. ``slip``;
        ``wind``: after any move the agent is blown one more cell east w.p. ``slip``."""
        if not 0.0 <= slip <= 1.0:
            raise ValueError(f"slip must be in [0, 1], got {slip}")
        if mode not in ("perpendicular", "wind"):
            raise ValueError(f"mode must be 'perpendicular' or 'wind', got {mode!r}")
        P = np.zeros((self.S, len(ACTIONS), self.S))
        for s in range(self.S):
            for a in range(len(ACTIONS)):
                s1 = self._move(s, a)
                if mode == "wind":
                    P[s, a, s1] += 1.0 - slip
                    P[s, a, self._move(s1, 3)] += slip
                    continue
                P[s, a, s1] += 1.0 if a == STAY else 1.0 - slip
                for b in _PERP.get(a, ()):
                    P[s, a, self._move(s, b)] += slip / 2
        return P


def patrol_position(path: list[Cell], t: int) -> Cell:
    """Position at time t of a hazard walking back and forth from ``path[0]`` to ``path[-1]``."""
    (i0, j0), (i1, j1) = path[0], path[-1]
    if i0 != i1 and j0 != j1:
        raise ValueError(f"patrol segment must be straight, got {path[0]} -> {path[-1]}")
    n = max(abs(i1 - i0), abs(j1 - j0))
    if n == 0:
        return (i0, j0)
    k = t % (2 * n)
    k = k if k <= n else 2 * n - k
    return (int(i0 + k * np.sign(i1 - i0)), int(j0 + k * np.sign(j1 - j0)))


def hazard_cost(grid: Grid, T: int, patrols: list[list[Cell]] = (),
                windows: list[tuple[Cell, int, int]] = (), hazard: float = 5.0) -> np.ndarray:
    """Occupancy cost ``cost[T, S]``: ``hazard`` on each patrol's cell at t, and on a window's cell
    for ``t0 <= t < t1``."""
    cost = np.zeros((T, grid.S))
    for t in range(T):
        for path in patrols:
            cost[t, grid.idx(patrol_position(path, t))] += hazard
        for cell, t0, t1 in windows:
            if t0 <= t < t1:
                cost[t, grid.idx(cell)] += hazard
    return cost


def grid_dmdp(grid: Grid, cost: np.ndarray, gamma: float, *, step_cost: float = 0.1,
              slip: float = 0.0, slip_mode: str = "perpendicular",
              sparse: bool = False) -> DMDP | DetDMDP:
    """The grid DMDP with ``r[t, s, a] = -(step_cost + cost[t, s])`` for every action."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[1] != grid.S:
        raise ValueError(f"cost must have shape [T, S={grid.S}], got {cost.shape}")
    r = -np.broadcast_to((step_cost + cost)[:, :, None], (*cost.shape, len(ACTIONS)))
    if sparse:
        if slip:
            raise ValueError("sparse=True needs slip=0 (DetDMDP is deterministic)")
        return DetDMDP(grid.next_states(), r, gamma)
    return DMDP(grid.transitions(slip, slip_mode), r, gamma)


def random_hazards(rng: np.random.Generator, grid: Grid, T: int, n_patrols: int = 2,
                   n_windows: int = 2, protect: tuple[Cell, ...] = ()
                   ) -> tuple[list[list[Cell]], list[tuple[Cell, int, int]]]:
    """Random patrols (a full row or column, random direction) and time windows of length
    1..T//2 on random free cells other than ``protect`` (start, goal)."""
    patrols: list[list[Cell]] = []
    for _ in range(n_patrols):
        if rng.random() < 0.5:
            j = int(rng.integers(grid.w))
            seg = [(0, j), (grid.h - 1, j)]
        else:
            i = int(rng.integers(grid.h))
            seg = [(i, 0), (i, grid.w - 1)]
        if rng.random() < 0.5:
            seg = seg[::-1]
        patrols.append(seg)
    free = [grid.cell(s) for s in range(grid.S)
            if grid.cell(s) not in protect and grid.cell(s) not in grid.walls]
    windows = []
    for _ in range(n_windows):
        cell = free[int(rng.integers(len(free)))]
        t0 = int(rng.integers(max(T - 1, 1)))
        windows.append((cell, t0, t0 + int(rng.integers(1, max(T // 2, 1) + 1))))
    return patrols, windows


def render_path(grid: Grid, cost: np.ndarray, path: list[int]) -> list[str]:
    """ASCII frames, one per t: ``A`` agent, ``#`` wall, ``x`` hazard, ``.`` free."""
    frames = []
    for t, s in enumerate(path):
        rows = []
        for i in range(grid.h):
            row = ""
            for j in range(grid.w):
                c = grid.idx((i, j))
                row += ("A" if c == s else "#" if (i, j) in grid.walls
                        else "x" if t < len(cost) and cost[t, c] > 0 else ".")
            rows.append(row)
        frames.append("\n".join(rows))
    return frames
