"""Execute a validated pipeline on Ray.

Each step (or sweep trial) is one Ray task with the step's resources; inputs are passed as
ObjectRefs, so independent steps run concurrently and data never goes through the driver.
The driver only waits on the small ``StepMeta`` results (``num_returns=2``), decides cache
hits, selection and skips.

The executor knows nothing of MLflow or the console: it emits step events and listeners
(``pipelines.store.recorder.RunRecorder`` for MLflow, ``pipelines.run.console.Board`` for the screen)
subscribe, as Kedro's runner hooks and Ray Tune's callbacks do. Events, in order of a step's
life: ``step_started``, then per trial ``trial_cached`` (a hit nobody needs to load),
``trial_submitted``, ``trial_finished`` or ``trial_failed``, then ``step_finished``.

A measuring step's trials are pinned to the nodes whose hardware its key holds (``pins``,
``pipelines.run.placement``), and every job carries what its key read on the driver (``facts``),
which the worker checks against its node before computing. A task's Ray options (resources,
retries, that pin) and the remote function are ``pipelines.run.remote``'s.

Executors of one multirun (``pipelines.run.multirun``) share a table of computing trials by cache
key: a trial whose key another execution already submitted is not submitted again; it waits on
the same ObjectRefs and ends with ``trial_shared`` instead of ``trial_finished``.
"""

from __future__ import annotations

import time

from pipelines.config.select import choose
from pipelines.config.spec import PipelineSpec
from pipelines.run.fit import alive_nodes, unfit
from pipelines.run.interrupt import INTERRUPT
from pipelines.run.remote import execute_remote, first_line, task_options
from pipelines.run.state import EVENTS, Context, Listener, StepState, Trial, cached_meta
from pipelines.run.worker import Facts, StepJob, StepMeta

__all__ = ["EVENTS", "Context", "Executor", "Listener", "StepMeta", "StepState", "Trial", "cached_meta"]


class Executor:
    def __init__(
        self,
        spec: PipelineSpec,
        ctx: Context,
        keys: dict[str, list[str]],
        hits: dict[str, list],
        listeners: list[Listener] | None = None,
        shared: dict | None = None,
        facts: dict[str, list[Facts]] | None = None,
        pins: dict[str, list[str]] | None = None,
    ):
        self.spec, self.ctx, self.listeners = spec, ctx, list(listeners or [])
        self.facts = facts or {}  # per step and trial: what its key read on the driver (worker.check_facts)
        self.pins = pins or {}  # measuring step -> the node ids its trials go to (pipelines.run.placement)
        self.states = {
            n: StepState(s, [Trial(k, t.label, t.params, h) for k, t, h in zip(keys[n], s.trials, hits[n])])
            for n, s in spec.steps.items()
        }
        self.inflight: dict = {}  # meta ObjectRef -> [(step, trial index)] (several if shared)
        self.shared = shared  # cache key -> (output ref, meta ref), across a multirun's executions
        self.owns_ray = False  # set by the session when it started Ray (and will shut it down)
        self.check_fit = True  # fail a step no node can hold (pipelines.run.fit); off: ray.wait_for_nodes
        self.before_cancel = lambda: None  # Ctrl-C on a joined cluster: the lifecycle ends the runs first
        self._nodes: list[dict[str, float]] | None = None

    def emit(self, event: str, st: StepState, trial: Trial | None = None) -> None:
        for listener in self.listeners:
            listener.on_event(event, st, trial)

    # ---- cache -------------------------------------------------------------------------
    def _fully_cached(self, name: str) -> bool:
        return all(t.hit is not None for t in self.states[name].trials)

    def _needs_output(self, name: str) -> bool:
        return any(not self._fully_cached(c) for c in self.spec.consumers(name))

    # ---- submission --------------------------------------------------------------------
    def tags(self, st: StepState, t: Trial) -> dict[str, str]:
        return {
            "slimray.step": st.spec.name,
            "slimray.task": st.spec.task,
            "slimray.cache_key": t.key,
            "slimray.root": self.ctx.root_run,
            "mlflow.source.git.commit": self.ctx.commit,
            **({"slimray.trial": t.label} if t.label else {}),
        }

    @staticmethod
    def run_name(st: StepState, t: Trial) -> str:
        return f"{st.spec.name}[{t.label}]" if t.label else st.spec.name

    def _input_refs(self, st: StepState) -> tuple[list, list]:
        args, layout = [], []
        for param, refs in st.spec.inputs.items():
            for ref in refs:
                up = self.states[ref.step]
                chosen = up.trials if ref.all_trials else [up.trials[up.selected or 0]]
                outs = [t.output for t in chosen if t.status in ("done", "cached")]
                args += outs
                layout.append((param, param in st.spec.list_inputs, len(outs)))
        return args, layout

    def _start(self, st: StepState) -> None:
        st.status, st.started = "running", time.time()
        self.emit("step_started", st)
        self._submit_trials(st)

    def _submit_trials(self, st: StepState) -> None:
        limit = st.spec.max_concurrency or len(st.trials)
        running = sum(t.status == "running" for t in st.trials)
        inputs: tuple[list, list] | None = None
        for i, t in enumerate(st.trials):
            if t.status != "pending" or running >= limit:
                continue
            if t.hit is not None and not self._needs_output(st.spec.name):
                t.status = "cached"
                self.emit("trial_cached", st, t)  # the recorder records the run and sets t.meta
                self._maybe_finish(st)
                continue
            inputs = inputs or self._input_refs(st)
            self._submit(st, i, t, *inputs)
            running += 1

    def _submit(self, st: StepState, i: int, t: Trial, args: list, layout: list) -> None:
        s = st.spec
        if self.shared is not None and s.cache and t.hit is None:
            if t.key in self.shared:  # computed (or computing) for another execution: wait on it
                t.output, meta_ref = self.shared[t.key]
                t.status, t.shared = "running", True
                self.inflight.setdefault(meta_ref, []).append((s.name, i))
                self.emit("trial_submitted", st, t)
                return
        if self.check_fit:
            if self._nodes is None:
                self._nodes = alive_nodes()
            reason = unfit(s.name, s.resources, self._nodes)
            if reason:  # Ray would queue it forever on a cluster without an autoscaler
                t.status, t.error = "failed", reason
                self.emit("trial_failed", st, t)
                self._maybe_finish(st)
                return
        run_name = self.run_name(st, t)
        job = StepJob(
            step=s.name,
            task=s.task,
            run_name=run_name,
            params=t.params,
            seed=self.ctx.seed,
            uri=self.ctx.uri,
            experiment_id=self.ctx.experiment_id,
            parent_run=st.run_id or self.ctx.root_run,
            root_run=self.ctx.root_run,
            tags=self.tags(st, t),
            layout=layout,
            cached_from=t.hit.info.run_id if t.hit is not None else None,
            cached_summary=dict(t.hit.data.metrics) if t.hit is not None else {},
            cached_publishes=t.hit is not None and t.hit.data.tags.get("slimray.publishes") == "true",
            use_gpu=s.resources.num_gpus > 0,
            threads=max(1, int(s.resources.num_cpus)),
            trusted_targets=self.spec.trusted_targets,
            retries=s.retries,
            facts=self.facts[s.name][i] if s.name in self.facts else None,
        )
        remote = execute_remote().options(**task_options(s, run_name, self.pins.get(s.name), i))
        t.output, meta_ref = remote.remote(job, *args)
        t.status = "running"
        if self.shared is not None and s.cache and t.hit is None:
            self.shared[t.key] = (t.output, meta_ref)
        self.inflight.setdefault(meta_ref, []).append((s.name, i))
        self.emit("trial_submitted", st, t)

    # ---- results -----------------------------------------------------------------------
    def on_result(self, meta_ref) -> None:
        """A trial's meta ref is ready (``ray.wait``): record it, submit what it unblocked."""
        for name, i in self.inflight.pop(meta_ref):
            self._on_trial(meta_ref, self.states[name], i)

    def _on_trial(self, meta_ref, st: StepState, i: int) -> None:
        import ray

        t = st.trials[i]
        try:
            t.meta = ray.get(meta_ref)
            st.nodes.add(t.meta.node_id[:8])
            if t.shared:  # listeners record it in this execution as a hit on the computing run
                t.status = "cached"
                self.emit("trial_shared", st, t)
            else:
                t.status = "cached" if t.meta.cached else "done"
                self.emit("trial_finished", st, t)
        except Exception as e:  # the task's error (a RayError), after its retries
            t.status, t.error = "failed", first_line(e)
            self.emit("trial_failed", st, t)
        self._submit_trials(st)
        self._maybe_finish(st)

    def _maybe_finish(self, st: StepState) -> None:
        if st.status != "running" or any(t.status in ("pending", "running") for t in st.trials):
            return
        st.ended = time.time()
        ok = [i for i, t in enumerate(st.trials) if t.status in ("done", "cached")]
        failed = [t for t in st.trials if t.status == "failed"]
        if not ok:
            st.status, st.note = "failed", failed[0].error if failed else "no trial finished"
        else:
            st.selected = self._select(st, ok)
            st.status = "cached" if all(st.trials[i].status == "cached" for i in ok) and not failed else "done"
            if failed:
                st.note = f"{len(failed)} trial(s) failed: {failed[0].error}"
        self.emit("step_finished", st)

    def _select(self, st: StepState, ok: list[int]) -> int:
        upstream = {
            name: self.states[name].summary for name in self.spec.steps if self.states[name].selected is not None
        }
        summaries = {i: meta.summary for i in ok if (meta := st.trials[i].meta) is not None}
        index, note = choose(st.spec.select, summaries, upstream)
        st.note = st.note or note
        return index

    # ---- the loop ----------------------------------------------------------------------
    def _schedule(self) -> None:
        for st in self.states.values():
            if st.status != "pending":
                continue
            ups = [self.states[u].status for u in st.spec.upstream]
            if any(s in ("failed", "skipped") for s in ups):
                st.status = "skipped"
                bad = [u for u in st.spec.upstream if self.states[u].status in ("failed", "skipped")]
                st.note = f"upstream {bad[0]} did not finish"
                self.emit("step_finished", st)
            elif all(s in ("done", "cached") for s in ups):
                self._start(st)

    def advance(self) -> bool:
        """Start or skip what its upstream allows; True when the execution has nothing left."""
        self._schedule()
        return not self.inflight and all(st.status != "pending" for st in self.states.values())

    def run(self) -> dict[str, StepState]:
        try:
            while not self.advance():
                INTERRUPT.check()
                if not self.inflight:
                    continue
                import ray

                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    self.on_result(ref)
            return self.states
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self, settle_s: float = 3.0) -> None:
        """Ctrl-C: cancel every Ray task still running and wait (at most ``settle_s``) until the
        cancellations have landed (a task just starting may still open its MLflow run; the
        lifecycle ends open runs KILLED after this, and, through ``before_cancel``, before it).
        When this process started Ray (``owns_ray``), nothing is cancelled: ``ray.shutdown()``
        ends every worker anyway, and Ray 2.60's ``ray.cancel`` of a task whose ObjectRef
        arguments are still being resolved can abort the driver (``reference_counter.cc: Check
        failed: submitted_task_ref_count > 0``), measured in 2 of 10 interrupted runs."""
        if self.inflight and not self.owns_ray:
            self.before_cancel()  # so that no run stays RUNNING should ray.cancel abort us
            import ray

            refs = list(self.inflight)
            for ref in refs:
                try:
                    ray.cancel(ref, force=True, recursive=True)
                except Exception:  # noqa: BLE001 - already finished or its worker is gone
                    pass
            try:
                ray.wait(refs, num_returns=len(refs), timeout=settle_s)
            except Exception:  # noqa: BLE001 - a cancelled ref may raise here; we only wait
                pass
        for st in self.states.values():
            if st.status in ("pending", "running"):
                st.status, st.note = "skipped", "cancelled"
