"""The task table: every task a pipeline step may name. A literal table, checked by a test
against the modules in this package (no decorator registry)."""
from tasks import toy, train

TASKS = {
    "train": train.run,
    # the engine's own fixtures (used by the `demo` pipeline and the engine tests)
    "toy_source": toy.source,
    "toy_add": toy.add,
    "toy_sleep": toy.sleep,
    "toy_fail": toy.fail,
    "toy_sum": toy.total,
}
