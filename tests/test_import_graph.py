"""No import cycles in medsam_gui: the graph of every import statement between its modules
(module level and inside functions, read with ``ast``; tests/module_imports.py) has no cycle.

A cycle that only works because one side imports lazily still ties the two modules together
(neither can be understood, tested or replaced alone), so function-level imports count too.
"""

from __future__ import annotations

from collections import deque

import module_imports  # tests/ is on sys.path (rootdir-relative import, like hostile_corpus)


def _strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _shortest_cycle(graph: dict[str, dict], start: str, members: set[str]) -> list[str]:
    """start -> ... -> start, through ``members`` only (breadth first)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle")


def _describe(graph: dict[str, dict], cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        imp = graph[a][b]
        where = "" if imp.top_level else " (in a function)"
        steps.append(f"{a} imports {b} at line {imp.line}{where}")
    return "; ".join(steps)


def test_graph_reads_the_real_package():
    graph = module_imports.graph()
    assert len(graph) > 40, sorted(graph)
    assert "medsam_gui.core.volume" in graph["medsam_gui.io.readers"]  # a module-level import
    assert "medsam_gui.gui.main_window" in graph["medsam_gui.app"]  # one inside build_app
    assert not graph["medsam_gui.app"]["medsam_gui.gui.main_window"].top_level


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None, "d": None}, "d": {}, "e": {"e": None}}
    assert _strongly_connected(graph) == [["a", "b", "c"]]
    assert _shortest_cycle(graph, "a", {"a", "b", "c"}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = module_imports.graph()
    cycles = []
    for comp in _strongly_connected(graph):
        cycle = _shortest_cycle(graph, comp[0], set(comp))
        cycles.append(f"modules {', '.join(comp)} import each other: {_describe(graph, cycle)}")
    assert cycles == [], "\n".join(cycles)
