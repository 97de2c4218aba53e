"""Execute a validated pipeline on Ray.

Each step (or sweep trial) is one Ray task with the step's resources; inputs are passed as
ObjectRefs, so independent steps run concurrently and data never goes through the driver.
The driver only waits on the small ``StepMeta`` results (``num_returns=2``), decides cache
hits, selection and skips, and keeps the console board and MLflow in step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from pipelines.cache import step_keys
from pipelines.select import choose
from pipelines.spec import PipelineSpec, StepSpec
from pipelines.tracking import create_run, find_cached, open_runs
from pipelines.worker import StepJob, StepMeta, execute


@dataclass
class Trial:
    key: str
    label: str
    params: dict
    hit: object = None  # the cached MLflow run, if any
    status: str = "pending"  # pending | running | cached | done | failed
    output: object = None  # ObjectRef of the output (None when not loaded)
    meta: StepMeta | None = None
    error: str = ""


@dataclass
class StepState:
    spec: StepSpec
    trials: list[Trial]
    status: str = "pending"  # pending | running | cached | done | failed | skipped
    run_id: str | None = None  # the step run of a sweep (trials are its children)
    started: float = 0.0
    ended: float = 0.0
    nodes: set = field(default_factory=set)
    selected: int | None = None
    note: str = ""

    @property
    def summary(self) -> dict:
        t = self.trials[self.selected] if self.selected is not None else None
        return dict(t.meta.summary) if t and t.meta else {}


@dataclass
class Context:
    uri: str
    experiment_id: str
    root_run: str
    seed: int
    commit: str
    use_cache: bool


_execute = ray.remote(execute)  # defined once: Ray exports a remote function to the cluster once


def _cached_summary(run) -> dict[str, float]:
    return dict(run.data.metrics) if run is not None else {}


class Executor:
    def __init__(self, spec: PipelineSpec, ctx: Context, board=None):
        self.spec, self.ctx, self.board = spec, ctx, board
        self.client = MlflowClient(tracking_uri=ctx.uri)
        keys = step_keys(spec, ctx.seed)
        self.states = {n: StepState(s, [Trial(k, t.label, t.params) for k, t in zip(keys[n], s.trials)])
                       for n, s in spec.steps.items()}
        self.inflight: dict = {}  # meta ObjectRef -> (step, trial index)
        if ctx.use_cache:
            self._lookup_cache()

    # ---- cache -------------------------------------------------------------------------
    def _lookup_cache(self) -> None:
        for st in self.states.values():
            if st.spec.cache:
                for t in st.trials:
                    t.hit = find_cached(self.client, self.ctx.experiment_id, t.key)

    def _fully_cached(self, name: str) -> bool:
        return all(t.hit is not None for t in self.states[name].trials)

    def _needs_output(self, name: str) -> bool:
        return any(not self._fully_cached(c) for c in self.spec.consumers(name))

    # ---- submission --------------------------------------------------------------------
    def _tags(self, st: StepState, key: str) -> dict[str, str]:
        return {"slimray.step": st.spec.name, "slimray.task": st.spec.task, "slimray.cache_key": key,
                "slimray.root": self.ctx.root_run, "mlflow.source.git.commit": self.ctx.commit}

    def _trial_tags(self, st: StepState, t: Trial) -> dict[str, str]:
        return {**self._tags(st, t.key), **({"slimray.trial": t.label} if t.label else {})}

    @staticmethod
    def _run_name(st: StepState, t: Trial) -> str:
        return f"{st.spec.name}[{t.label}]" if t.label else st.spec.name

    def _input_refs(self, st: StepState) -> tuple[list, list]:
        args, layout = [], []
        for param, refs in st.spec.inputs.items():
            for ref in refs:
                up = self.states[ref.step]
                outs = ([t.output for t in up.trials if t.status in ("done", "cached")] if ref.all_trials
                        else [up.trials[up.selected].output])
                args += outs
                layout.append((param, param in st.spec.list_inputs, len(outs)))
        return args, layout

    def _start(self, st: StepState) -> None:
        st.status, st.started = "running", time.time()
        if st.spec.is_sweep:
            name = st.spec.name
            tags = {**self._tags(st, "sweep:" + ",".join(t.key[:12] for t in st.trials)),
                    "slimray.cached": str(self._fully_cached(name)).lower(),
                    "slimray.node_id": ray.get_runtime_context().get_node_id()}
            st.run_id = create_run(self.client, self.ctx.experiment_id, name, self.ctx.root_run, tags)
        self._submit_trials(st)

    def _submit_trials(self, st: StepState) -> None:
        limit = st.spec.max_concurrency or len(st.trials)
        running = sum(t.status == "running" for t in st.trials)
        args, layout = None, None
        for i, t in enumerate(st.trials):
            if t.status != "pending" or running >= limit:
                continue
            if t.hit is not None and not self._needs_output(st.spec.name):
                self._record_cached(st, t)
                continue
            if args is None:
                args, layout = self._input_refs(st)
            self._submit(st, i, t, args, layout)
            running += 1

    def _submit(self, st: StepState, i: int, t: Trial, args: list, layout: list) -> None:
        s = st.spec
        run_name = self._run_name(st, t)
        job = StepJob(step=s.name, task=s.task, run_name=run_name, params=t.params, seed=self.ctx.seed,
                      uri=self.ctx.uri, experiment_id=self.ctx.experiment_id,
                      parent_run=st.run_id or self.ctx.root_run, root_run=self.ctx.root_run,
                      tags=self._trial_tags(st, t),
                      layout=layout, cached_from=t.hit.info.run_id if t.hit is not None else None,
                      cached_summary=_cached_summary(t.hit), use_gpu=s.resources.num_gpus > 0,
                      threads=max(1, int(s.resources.num_cpus)), retries=s.retries)
        r = s.resources
        remote = _execute.options(
            num_returns=2, num_cpus=r.num_cpus, num_gpus=r.num_gpus, memory=r.memory,
            resources=r.custom or None, max_retries=s.retries, retry_exceptions=s.retries > 0,
            name=f"slimray:{run_name}")
        t.output, meta_ref = remote.remote(job, *args)
        t.status = "running"
        self.inflight[meta_ref] = (s.name, i)

    def _record_cached(self, st: StepState, t: Trial) -> None:
        """A cache hit nobody downstream needs to load: record the run, run nothing."""
        tags = {**self._trial_tags(st, t), "slimray.cached": "true", "slimray.cache_source": t.hit.info.run_id,
                "slimray.node_id": ray.get_runtime_context().get_node_id()}
        run_id = create_run(self.client, self.ctx.experiment_id, self._run_name(st, t),
                            st.run_id or self.ctx.root_run, tags)
        summary = _cached_summary(t.hit)
        ts = int(time.time() * 1000)
        if summary:
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in summary.items()])
        self.client.set_terminated(run_id, "FINISHED")
        t.status, t.meta = "cached", StepMeta(run_id, tags["slimray.node_id"], 0.0, summary, True)
        self._maybe_finish(st)

    # ---- results -----------------------------------------------------------------------
    def _on_result(self, meta_ref) -> None:
        name, i = self.inflight.pop(meta_ref)
        st = self.states[name]
        t = st.trials[i]
        try:
            t.meta = ray.get(meta_ref)
            t.status = "cached" if t.meta.cached else "done"
            st.nodes.add(t.meta.node_id[:8])
        except (ray.exceptions.RayError, Exception) as e:  # the task's error, after its retries
            t.status, t.error = "failed", _first_line(e)
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
        if st.run_id:
            self._close_sweep_run(st)

    def _select(self, st: StepState, ok: list[int]) -> int:
        upstream = {name: self.states[name].summary for name in self.spec.steps if self.states[name].selected is not None}
        index, note = choose(st.spec.select, {i: st.trials[i].meta.summary for i in ok}, upstream)
        st.note = st.note or note
        return index

    def _close_sweep_run(self, st: StepState) -> None:
        tags = [RunTag("slimray.trials", str(len(st.trials)))]
        metrics = []
        if st.selected is not None:
            tags.append(RunTag("slimray.selected", st.trials[st.selected].label))
            ts = int(time.time() * 1000)
            metrics = [Metric(k, v, ts, 0) for k, v in st.summary.items()]
        if st.note:
            tags.append(RunTag("slimray.note", st.note[:500]))
        self.client.log_batch(st.run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(st.run_id, "FAILED" if st.status == "failed" else "FINISHED")

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
            elif all(s in ("done", "cached") for s in ups):
                self._start(st)

    def run(self) -> dict[str, StepState]:
        try:
            while True:
                self._schedule()
                self._refresh()
                if not self.inflight:
                    if all(st.status != "pending" for st in self.states.values()):
                        break
                    continue
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    self._on_result(ref)
            self._refresh()
            return self.states
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Ctrl-C: cancel every Ray task still running and mark open MLflow runs KILLED."""
        for ref in list(self.inflight):
            ray.cancel(ref, force=True, recursive=True)
        for st in self.states.values():
            if st.status in ("pending", "running"):
                st.status, st.note = "skipped", "cancelled"
        for run_id in open_runs(self.client, self.ctx.experiment_id, self.ctx.root_run):
            self.client.set_terminated(run_id, "KILLED")

    def _refresh(self) -> None:
        if self.board is not None:
            self.board.update(self.states)


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    text = f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
