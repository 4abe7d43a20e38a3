"""Where independent units of work run: here, one after another (the default), or on a Ray cluster.

A *unit* is work that needs a loaded model and nothing else from the run: one generate call of an extraction or a
steering sweep (:func:`persona_lens.experiments.evaluate.generate_replies`), one chunk of base replies of a
screening dataset. An executor maps a module-level function ``fn(model, unit) -> result`` over units and yields
``(index, result)`` as units finish; the *driver* (the caller) writes each result to its append-only record file
at once. So a killed worker or driver loses at most the units in flight, and a rerun resumes from the records.

* :class:`SerialExecutor` runs ``fn`` on the caller's model, in order.
* :class:`EngineExecutor` sends units that need no hooks to an OpenAI-compatible server
  (:class:`persona_lens.core.engine.OpenAIEngine`); steered units run here. An engine that runs our hooks
  (:class:`persona_lens.core.vllm_engine.VLLMEngine`, :class:`persona_lens.core.vllm_server.VLLMServer`) takes every
  unit, steered included.
* :class:`RayExecutor` starts actors that each load their own copy of the model (``load_model(name, **kwargs)``)
  with the resources asked for (``num_gpus=1`` per actor on a GPU cluster) and hands units to idle actors. A unit
  whose actor dies is given to a fresh actor (up to ``max_retries`` times); the results are the same as serial,
  since every unit carries its own seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from persona_lens.core.errors import Error

__all__ = [
    "Executor",
    "SerialExecutor",
    "RayExecutor",
    "WorkerLost",
    "EngineExecutor",
    "executor_settings",
    "local_resources",
]

log = logging.getLogger(__name__)
U = TypeVar("U")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[Any, U], R], units: Iterable[U], model: Any) -> Iterator[tuple[int, R]]:
        """Yield ``(index of the unit, fn(a model, unit))`` for every unit, in completion order."""
        ...


class SerialExecutor:
    """Every unit in this process, on ``model``, in order (what every run did before executors existed)."""

    def map(self, fn: Callable[[Any, U], R], units: Iterable[U], model: Any) -> Iterator[tuple[int, R]]:
        for index, unit in enumerate(units):
            yield index, fn(model, unit)


class EngineExecutor:
    """Units on a serving engine: ``fn.on_engine(engine, model, unit)`` where ``fn`` offers it (hook-free
    generation), else an error naming the work. The engine is checked to serve ``model`` first."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def map(self, fn: Callable[[Any, U], R], units: Iterable[U], model: Any) -> Iterator[tuple[int, R]]:
        on_engine = getattr(fn, "on_engine", None)
        if on_engine is None:
            raise ValueError(f"{getattr(fn, '__name__', fn)} cannot run on a generation engine; drop --engine")
        self.engine.check_matches(model)
        for index, unit in enumerate(units):
            yield index, on_engine(self.engine, model, unit)


def executor_settings(executor: Any) -> dict[str, Any]:
    """What a run records in its ``settings.json`` about where its replies came from: the served model name of an
    engine (a resume whose engine serves another name is refused), nothing for this process or Ray."""
    engine = getattr(executor, "engine", None)
    return engine.settings() if engine is not None and hasattr(engine, "settings") else {}


def local_resources() -> tuple[int, int]:
    """``(GPUs, CPUs)`` a local Ray cluster started here would have."""
    import os

    import torch

    return (torch.cuda.device_count() if torch.cuda.is_available() else 0), (os.cpu_count() or 1)


class WorkerLost(Error, RuntimeError):
    """A unit's worker died more often than ``max_retries`` allows."""


class _Worker:
    """A Ray actor holding one loaded model."""

    def __init__(self, name: str, load_kwargs: dict[str, Any]) -> None:
        from persona_lens.core.models import load_model

        self.model = load_model(name, **load_kwargs)

    def model_name(self) -> str:
        return str(self.model.cfg.model_name)

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, fn: Callable[[Any, Any], Any], unit: Any) -> Any:
        return fn(self.model, unit)


class RayExecutor:
    """Units on Ray actors, each holding its own copy of the model ``name`` loaded with ``load_kwargs``.

    ``address``: None starts a local cluster (``num_cpus`` of this machine), ``"auto"`` joins the running one, or a
    ``ray://host:port`` address. ``workers`` actors, each reserving ``num_cpus`` CPUs and ``num_gpus`` GPUs. Actors
    start on the first :meth:`map` and are reused until :meth:`shutdown` (or the end of a ``with`` block).
    """

    def __init__(
        self,
        name: str,
        *,
        load_kwargs: dict[str, Any] | None = None,
        address: str | None = None,
        workers: int = 2,
        num_cpus: float = 1,
        num_gpus: float = 0,
        max_retries: int = 3,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.name = name
        self.load_kwargs = dict(load_kwargs or {})
        self.address = address
        self.workers = workers
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.max_retries = max_retries
        self.init_kwargs = dict(init_kwargs or {})
        self.actors: list[Any] = []
        self.restarts = 0
        self._model_name: str | None = None

    # ------------------------------------------------------------------------------------------------ actors
    def _ray(self) -> Any:
        try:
            import ray
        except ImportError as error:
            raise ImportError(
                "the Ray executor needs ray: pip install 'persona_lens[scale]' (or pip install ray)"
            ) from error
        if not ray.is_initialized():
            if self.address is None:
                self._check_resources(*local_resources(), "the local cluster")
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False, **self.init_kwargs)
            except ImportError as error:  # ray://HOST:PORT needs ray[client]
                raise ImportError(
                    f"--ray {self.address} needs Ray's client: pip install 'persona_lens[scale]' (or "
                    f"pip install 'ray[client]') ({error})"
                ) from error
        return ray

    def _check_resources(self, gpus: int, cpus: int, where: str) -> None:
        """A ValueError before any actor is asked for what ``where`` lacks (Ray would wait for it forever)."""
        for name, asked, has, what in (
            ("num_gpus (--ray-gpus)", self.num_gpus, gpus, "GPU"),
            ("num_cpus (--ray-cpus)", self.num_cpus, cpus, "CPU"),
        ):
            if asked > has:
                raise ValueError(
                    f"{name} {asked:g}: each Ray worker asks for {asked:g} {what}s, but {where} has "
                    f"{gpus} GPUs and {cpus} CPUs, so Ray would wait forever; ask for at most {has}"
                )

    def _new_actor(self) -> Any:
        ray = self._ray()
        cls = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=0)(_Worker)
        return cls.remote(self.name, self.load_kwargs)

    def start(self) -> list[Any]:
        """Start the actors (each loads the model) and check they serve the same model as each other; a cluster
        that lacks the GPUs or CPUs one worker asks for is a ValueError first (Ray would wait forever)."""
        ray = self._ray()
        if not self.actors:
            resources = ray.cluster_resources()
            self._check_resources(
                int(resources.get("GPU", 0)),
                int(resources.get("CPU", 0)),
                f"the cluster at {self.address or 'this machine'}",
            )
        while len(self.actors) < self.workers:
            self.actors.append(self._new_actor())
        names = set(ray.get([actor.model_name.remote() for actor in self.actors]))
        if len(names) != 1:
            raise ValueError(f"Ray workers loaded different models: {sorted(names)}")
        self._model_name = names.pop()
        return self.actors

    def pids(self) -> list[int]:
        """The process id of each actor (to watch or kill one)."""
        ray = self._ray()
        return ray.get([actor.pid.remote() for actor in self.start()])

    def shutdown(self) -> None:
        """Stop the actors (the cluster stays up)."""
        if self.actors:
            ray = self._ray()
            for actor in self.actors:
                ray.kill(actor)
        self.actors = []

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -------------------------------------------------------------------------------------------------- map
    def map(self, fn: Callable[[Any, U], R], units: Iterable[U], model: Any = None) -> Iterator[tuple[int, R]]:
        ray = self._ray()
        self.start()
        if model is not None and str(model.cfg.model_name) != self._model_name:
            raise ValueError(
                f"the Ray workers load {self._model_name!r} but this run's model is "
                f"{model.cfg.model_name!r}: give RayExecutor the same model name"
            )
        source = iter(enumerate(units))
        pending: dict[Any, tuple[int, Any, Any, int]] = {}  # ref -> (index, unit, actor, tries)
        idle = list(self.actors)
        retry: list[tuple[int, Any, int]] = []

        def submit(actor: Any) -> bool:
            if retry:
                index, unit, tries = retry.pop(0)
            else:
                nxt = next(source, None)
                if nxt is None:
                    return False
                (index, unit), tries = nxt, 0
            pending[actor.run.remote(fn, unit)] = (index, unit, actor, tries)
            return True

        while idle and submit(idle[-1]):
            idle.pop()
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            index, unit, actor, tries = pending.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                if tries >= self.max_retries:
                    raise WorkerLost(f"unit {index} lost its worker {tries + 1} times; last: {error}") from error
                log.warning("a Ray worker died running unit %d; giving it to a fresh worker", index)
                self.actors.remove(actor)
                actor = self._new_actor()
                self.actors.append(actor)
                self.restarts += 1
                retry.append((index, unit, tries + 1))
                if not submit(actor):
                    idle.append(actor)
                continue
            yield index, result
            if not submit(actor):
                idle.append(actor)
