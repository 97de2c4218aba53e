"""The MLflow side of an execution, as a listener of the executor's step events.

- a sweep step gets a step run (its trials are children), closed with the selected trial's
  metrics and the ``slimray.selected`` / ``slimray.note`` tags;
- a cache hit that nobody downstream needs is recorded as a run (``slimray.cached=true``,
  ``slimray.cache_source``) with the metrics of the run that computed it;
- a finished step's ``Publication`` (``tasks.core.types``) is published on the parent run:
  files, headline metrics, the description, registered models. On the computed path and on
  the cache-hit path alike: the worker stores it under the step run's ``publish/`` and tags the
  run ``slimray.publishes=true``; the recorder reads it back from whichever run holds it.

Workers write their own step runs (``pipelines.run.worker``); nothing else in the engine writes to
MLflow during execution.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from pipelines.run.dag import Context, Executor, StepState, Trial, cached_meta
from pipelines.store import artifacts, modelfiles, registry
from pipelines.store.lineage import Links
from pipelines.store.tracking import PUBLISH_DIR, TAG, create_run, metric_name
from tasks.core.types import Publication, Registration
from tasks.runtime.openvino import candidate_of

NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description


class RunRecorder:
    def __init__(self, client: MlflowClient, ctx: Context, node_id: str):
        self.client, self.ctx, self.node_id = client, ctx, node_id
        self.executor: Executor | None = None  # set by the session (names and tags of runs)
        self.console: list[str] = []  # text that published steps want shown after the table
        self.registered: list[str] = []  # "name@alias vN"
        self.links: Links | None = None  # the datasets' links to the runs (store.lineage), with the executor

    def on_event(self, event: str, st: StepState, trial: Trial | None) -> None:
        if self.links is None and self.executor is not None:
            self.links = Links(self.client, self.ctx.root_run, self.executor.spec)
        if event == "step_started" and st.spec.is_sweep:
            self._open_sweep_run(st)
        elif event == "trial_cached" and trial is not None:
            self._record_cached(st, trial)
        elif event == "step_finished":
            if st.run_id:
                self._close_sweep_run(st)
            if st.selected is not None:
                self._publish_checked(st, st.trials[st.selected])
        if self.links is not None:  # after the run of a cached trial exists
            self.links.on_event(event, st, trial)

    # ---- runs --------------------------------------------------------------------------
    def _open_sweep_run(self, st: StepState) -> None:
        assert self.executor is not None
        keys = ",".join(t.key[:12] for t in st.trials)
        tags = {
            **self.executor.tags(st, Trial(key="sweep:" + keys, label="", params={})),
            "slimray.cached": str(all(t.hit is not None for t in st.trials)).lower(),
            "slimray.node_id": self.node_id,
        }
        st.run_id = create_run(self.client, self.ctx.experiment_id, st.spec.name, self.ctx.root_run, tags)

    def _record_cached(self, st: StepState, t: Trial) -> None:
        """A cache hit nobody downstream needs to load: record the run, run nothing."""
        assert self.executor is not None and t.hit is not None
        tags = {
            **self.executor.tags(st, t),
            "slimray.cached": "true",
            "slimray.cache_source": t.hit.info.run_id,
            "slimray.node_id": self.node_id,
        }
        run_id = create_run(
            self.client, self.ctx.experiment_id, self.executor.run_name(st, t), st.run_id or self.ctx.root_run, tags
        )
        t.meta = cached_meta(t.hit, run_id, self.node_id)
        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, 0) for k, v in t.meta.summary.items()]
        self.client.log_batch(run_id, metrics=metrics)
        self.client.set_terminated(run_id, "FINISHED")

    def _close_sweep_run(self, st: StepState) -> None:
        assert st.run_id is not None
        tags = [RunTag("slimray.trials", str(len(st.trials)))]
        metrics = []
        if st.selected is not None:
            tags.append(RunTag("slimray.selected", st.trials[st.selected].label))
            ts = int(time.time() * 1000)
            metrics = [Metric(k, v, ts, 0) for k, v in st.summary.items()]
        if st.note:
            tags.append(RunTag("slimray.note", st.note[:500]))
        self.client.log_batch(st.run_id, metrics=metrics, tags=tags)
        status = "FAILED" if st.status == "failed" else "KILLED" if st.note == "cancelled" else "FINISHED"
        self.client.set_terminated(st.run_id, status)

    # ---- publishing --------------------------------------------------------------------
    def _publish_checked(self, st: StepState, t: Trial) -> None:
        """Publish, unless the stored publication fails its signed manifest: then nothing is
        published or registered, the source run is untagged and the step fails (one line)."""
        try:
            self._publish_trial(t)
        except artifacts.ArtifactError as e:
            source = t.hit.info.run_id if t.hit is not None else t.meta.run_id if t.meta else None
            if source and not artifacts.mark_corrupt(self.client, source, e):
                st.status, st.note = "failed", f"{e}; nothing published"  # another key: configuration
                return
            st.status, st.note = "failed", f"{e}; nothing published, untagged, rerun to recompute"

    def _publish_trial(self, t: Trial) -> None:
        if t.meta is None or not t.meta.publishes:
            return
        source = t.hit.info.run_id if t.hit is not None else t.meta.run_id
        key = self.client.get_run(source).data.tags.get(f"{TAG}cache_key", "")
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(source, PUBLISH_DIR, tmp)
            context = artifacts.entry_context(source, key, PUBLISH_DIR)
            pub = artifacts.load(local, f"publication of run {source}", context)
        if not isinstance(pub, Publication):
            raise TypeError(f"run {source}: {PUBLISH_DIR}/ holds a {type(pub).__name__}, not a Publication")
        self.publish(pub, source)

    def publish(self, pub: Publication, source: str | None = None) -> None:
        """Put ``pub`` on the parent run. ``source`` is the step run holding it: the logged
        models of an earlier execution are remembered there, so a cache hit registers a new
        version of the same logged model instead of logging it again."""
        root = self.ctx.root_run
        if pub.files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in pub.files.items():
                    Path(tmp, Path(name).name).write_bytes(data)
                self.client.log_artifacts(root, tmp)
        ts = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), ts, 0) for k, v in pub.metrics.items()]
        tags = [RunTag(NOTE_TAG, pub.description)] if pub.description else []
        tags += [RunTag(k, v) for k, v in pub.tags.items()]
        if metrics or tags:
            self.client.log_batch(root, metrics=metrics, tags=tags)
        versions = [(reg, *self._register(reg, source)) for reg in pub.models]
        self.registered += [f"{reg.name}@{reg.alias} v{version}" for reg, _, version in versions]
        self._describe(pub, source, versions)
        if pub.console:
            self.console.append(pub.console)

    def _register(self, reg: Registration, source: str | None) -> tuple[str, str]:
        """Register ``reg`` under ``name@alias`` as a version whose run is the parent run (the
        parent links to it; ``models:/<name>@<alias>`` serves it); returns (logged model id,
        version). The first execution logs the ONNX model to the parent run; later ones (cache
        hits) reuse that logged model when every one of its files verifies (``_reuse``)."""
        tag = f"{TAG}logged_model.{metric_name(reg.name)}"
        model_id = self.client.get_run(source).data.tags.get(tag) if source else None
        version = self._reuse(reg, model_id) if model_id else None
        if model_id is None or version is None:
            model_id, version = self._log(reg)
            if source:
                self.client.set_tag(source, tag, model_id)
        self.client.set_registered_model_alias(reg.name, reg.alias, version)
        if reg.runtime:  # the runtime the benchmark selected it for
            self.client.set_model_version_tag(reg.name, version, "slimray.runtime", reg.runtime)
        if reg.kind:  # how slimray serve serves it (pipelines.scale.serve)
            self.client.set_model_version_tag(reg.name, version, "slimray.kind", reg.kind)
        self.client.set_tag(self.ctx.root_run, "slimray.registered", f"{reg.name}@{reg.alias} v{version}")
        return model_id, version

    def _log(self, reg: Registration) -> tuple[str, str]:
        """Log ``reg`` as a new ONNX logged model of the parent run (a files-only one when it has no
        ONNX bytes: ``_log_files``), registered as a new version, and record its signed file list
        (``_seal``); returns (model id, version)."""
        import mlflow
        import onnx

        logged = registry.logged_name(reg.source) if reg.source else "model"  # in this experiment, not the default
        mlflow.set_tracking_uri(self.ctx.uri)  # MLflow's registry looks the logged model up in the global store
        if not reg.onnx:
            return self._log_files(reg, logged)
        proto = onnx.load_from_string(reg.onnx)
        with tempfile.TemporaryDirectory() as tmp:  # serving.json, tokenizer: beside the graph
            extra = [str(Path(tmp, Path(k).name)) for k in reg.files]
            for path, data in zip(extra, reg.files.values()):
                Path(path).write_bytes(data)
            info = mlflow.onnx.log_model(
                proto,
                name=logged,
                model_id=self._logged_model_id(logged),
                signature=registry.onnx_signature(proto),  # input/output names, dtypes, shapes
                registered_model_name=reg.name,
                pip_requirements=["onnxruntime"] + (["openvino"] if reg.runtime == "openvino" else []),
                run_id=self.ctx.root_run,
                extra_files=extra or None,
                save_as_external_data=False,  # model.onnx stays the publication's bytes (modelfiles.differs)
            )
        version = str(info.registered_model_version)
        self._seal(reg, info.model_id, version)
        return info.model_id, version

    def _log_files(self, reg: Registration, logged: str) -> tuple[str, str]:
        """A files-only logged model (``registry.log_files_model``), sealed; returns (model id, version)."""
        model_id, version = registry.log_files_model(
            self.client, self._logged_model_id(logged), reg.name, reg.files, self.ctx.root_run
        )
        self._seal(reg, model_id, version)
        return model_id, version

    def _logged_model_id(self, logged: str) -> str:
        """A new logged model of the pipeline's experiment (not MLflow's default one)."""
        return self.client.create_logged_model(self.ctx.experiment_id, logged, self.ctx.root_run).model_id

    def _download(self, model_id: str, dst: str) -> Path:
        """Every file of a logged model, downloaded into ``dst``."""
        import mlflow

        location = self.client.get_logged_model(model_id).artifact_location
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=dst, tracking_uri=self.ctx.uri))

    def _seal(self, reg: Registration, model_id: str, version: str) -> None:
        """Record the just logged model's files, signed (``modelfiles.FILES_TAG``), on the logged
        model (what ``_reuse`` verifies) and on the version (what ``slimray serve`` verifies).
        They are read back and must be the publication's graph and files."""
        with tempfile.TemporaryDirectory() as tmp:
            files = modelfiles.files_of(self._download(model_id, tmp))
        wrong = modelfiles.differs(files, reg)
        if wrong:
            raise modelfiles.ModelFilesError(f"logged model {model_id}: {wrong} is not what was just logged")
        value = modelfiles.signed_files(files, model_id)
        self.client.set_logged_model_tags(model_id, {modelfiles.FILES_TAG: value})
        self.client.set_model_version_tag(reg.name, version, modelfiles.FILES_TAG, value)

    def _reuse(self, reg: Registration, model_id: str) -> str | None:
        """A new version of ``reg.name`` from the already logged model ``model_id`` (named by the
        source run's unsigned tag), linked to this parent run, only when the logged model's signed
        file list is the (signed, verified) publication's graph and files and every file of the
        logged model matches it: no file missing, added or changed. Else None: log it again (a
        tampered model is said on the console)."""
        where = f"logged model {model_id}"
        try:
            model = self.client.get_logged_model(model_id)
            self.client.get_registered_model(reg.name)
        except Exception:  # noqa: BLE001 - deleted or unreadable: log the model again
            return None
        recorded = model.tags.get(modelfiles.FILES_TAG)
        try:
            wrong = modelfiles.differs(modelfiles.read_files(recorded, model_id, where), reg)
            if wrong:
                raise modelfiles.ModelFilesError(f"{where}: {wrong} is not the publication's")
            with tempfile.TemporaryDirectory() as tmp:
                modelfiles.check_files(self._download(model_id, tmp), recorded, model_id, where)
        except modelfiles.ModelFilesError as e:
            self.console.append(f"{e}: not reused, the verified model is logged again")
            return None
        except Exception:  # noqa: BLE001 - unreadable: log the model again
            return None
        mv = self.client.create_model_version(  # source as log_model writes it: the version names its model
            reg.name, source=f"models:/{model_id}", run_id=self.ctx.root_run, model_id=model_id
        )
        self.client.set_model_version_tag(reg.name, str(mv.version), modelfiles.FILES_TAG, str(recorded))
        return str(mv.version)

    def _describe(self, pub: Publication, source: str | None, versions: list[tuple[Registration, str, str]]) -> None:
        """Every card as a logged model; each registered version's tags and description
        (``pipelines.store.registry``). ``versions``: each registration with the logged model
        and the version ``_register`` made, never re-read through the alias (which another
        driver may have moved since)."""
        if not pub.models and not pub.candidates:
            return
        states = self.executor.states if self.executor is not None else {}
        registered: dict[str, str | None] = {reg.source or reg.name: model_id for reg, model_id, _ in versions}
        runs = registry.model_runs(states)
        registry.log_cards(
            self.client, self.ctx.experiment_id, pub.candidates, runs, source, self.ctx.root_run, registered
        )
        cards = {c["name"]: c for c in pub.candidates}
        for reg, _, version in versions:
            model = reg.source or reg.name
            chain = registry.recipe(self.executor.spec, states, model) if self.executor is not None else model
            datasets = self._datasets(model, source)
            tags = registry.version_tags(cards.get(model), model, chain, datasets, self.ctx.commit)
            registry.describe_version(self.client, reg.name, version, tags, pub.description)

    def _datasets(self, model: str, source: str | None) -> list[tuple[str, str]]:
        """(name, digest) of the datasets ``model`` was made from: those upstream of the step that
        made it, else (a model that names no step) of the step that published it."""
        if self.links is None or self.executor is None:
            return []
        steps = self.executor.spec.steps
        step = candidate_of(model).split("[", 1)[0]
        if step not in steps:
            runs = registry.model_runs(self.executor.states)
            step = next((name.split("[", 1)[0] for name, run in runs.items() if run == source), "")
        return self.links.consumed(step) if step in steps else []
