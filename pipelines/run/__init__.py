"""How a run goes: the one run lifecycle (Ray, parent runs, Ctrl-C), a single execution (session),
many at once (multirun), the DAG executor (dag) and what runs inside a Ray task (worker)."""
