"""Independent units on a local 2-CPU Ray cluster: the same results as serial, a killed worker, a killed driver."""

import json
import os
import signal

import pytest
import torch

import persona_lens.experiments.evaluate as E
import persona_lens.experiments.extract as X
import persona_lens.experiments.steering_sweep as S
from persona_lens.core.chat import make_messages
from persona_lens.core.io import JsonlRecords
from persona_lens.core.vectors import PersonaVector, load_vector
from persona_lens.experiments.executor import RayExecutor, SerialExecutor
from persona_lens.experiments.screen import ScreenConfig, screen_dataset
from persona_lens.judges.rule import RuleJudge
from persona_lens.traits.schema import load_trait
from tests.conftest import load_cached

ray = pytest.importorskip("ray", reason="the Ray executor needs ray (pip install 'persona_lens[scale]')")
pytestmark = pytest.mark.slow
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(MODEL, load_kwargs={"device": "cpu"}, workers=2)
    executor.start()
    yield executor
    executor.shutdown()
    ray.shutdown()


def _extract(out, executor=None, **kw):
    config = X.ExtractConfig(
        n_samples=2, n_questions=3, n_pairs=2, max_new_tokens=6, batch_size=4, coherence_threshold=0.0, **kw
    )
    return X.extract(
        load_cached(MODEL),
        load_trait("shouting"),
        judge=RuleJudge("shouting"),
        coherence_judge=RuleJudge("coherence"),
        config=config,
        out_dir=out,
        progress=False,
        executor=executor,
    )


def _same_extraction(a, b):
    for positions in ("response", "prompt", "last_prompt"):
        torch.testing.assert_close(a.vectors[positions].vectors, b.vectors[positions].vectors, rtol=0, atol=0)
    assert JsonlRecords(a.out_dir / "responses.jsonl").load() == JsonlRecords(b.out_dir / "responses.jsonl").load()
    assert a.report["kept"] == b.report["kept"] and a.report["per_layer"] == b.report["per_layer"]


def test_extraction_on_ray_equals_serial(cluster, tmp_path):
    serial = _extract(tmp_path / "serial")
    parallel = _extract(tmp_path / "ray", executor=cluster)
    _same_extraction(serial, parallel)
    assert {pid for pid in cluster.pids()} and os.getpid() not in cluster.pids()


def test_sampled_extraction_on_ray_equals_serial(cluster, tmp_path):
    serial = _extract(tmp_path / "serial", temperature=1.0)
    _same_extraction(serial, _extract(tmp_path / "ray", executor=cluster, temperature=1.0))


def test_sweep_on_ray_equals_serial(cluster, tmp_path):
    model = load_cached(MODEL)
    tensor = torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    vector = PersonaVector("shouting", model.cfg.model_name, tensor, "response", 1, 1, {})
    config = S.SteeringSweepConfig(
        layers=[1, 2, 3],
        coefficients=[0.5, 2.0],
        n_questions=3,
        max_new_tokens=6,
        temperature=0.0,
        batch_size=8,
        coherence_threshold=0.0,
    )
    results = [
        S.run_steering_sweep(
            model,
            vector,
            load_trait("shouting"),
            judge=RuleJudge("shouting"),
            coherence_judge=RuleJudge("coherence"),
            config=config,
            out_dir=tmp_path / label,
            progress=False,
            executor=executor,
        )
        for label, executor in (("serial", None), ("ray", cluster))
    ]
    assert results[0].cells == results[1].cells and results[0].chosen == results[1].chosen
    assert (
        JsonlRecords(tmp_path / "serial" / "responses.jsonl").load()
        == JsonlRecords(tmp_path / "ray" / "responses.jsonl").load()
    )


def test_screening_on_ray_equals_serial(cluster, tmp_path):
    model = load_cached(MODEL)
    data = tmp_path / "d.jsonl"
    questions = ["What is the capital of France?", "Name a colour.", "Tell me a story.", "2+2?", "Why?"]
    with open(data, "w", encoding="utf-8") as handle:
        for i in range(11):
            messages = [
                *make_messages(questions[i % 5], system="Be nice." if i % 3 else None),
                {"role": "assistant", "content": f"Answer number {i}."},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
        handle.write("not json\n")
    generator = torch.Generator().manual_seed(11)
    vectors = [
        PersonaVector(
            name, model.cfg.model_name, torch.randn(model.cfg.n_layers + 1, model.cfg.d_model, generator=generator)
        )
        for name in ("alpha", "beta")
    ]
    config = ScreenConfig(layer=2, max_new_tokens=6, chunk_size=3, batch_size=2)
    serial = screen_dataset(model, data, vectors, tmp_path / "serial.jsonl", config, progress=False)
    parallel = screen_dataset(model, data, vectors, tmp_path / "ray.jsonl", config, progress=False, executor=cluster)
    assert (tmp_path / "serial.jsonl").read_text() == (tmp_path / "ray.jsonl").read_text()
    assert parallel["base_responses_generated"] == serial["base_responses_generated"] == 9  # distinct prompts
    assert parallel["base_responses_cached"] == serial["base_responses_cached"]


def _die_once(model, unit):
    """A generate call whose worker process is killed (SIGKILL) the first time it runs the marked unit."""
    part, settings, with_tokens = unit
    marker = next((job.fields["die_marker"] for job in part if job.fields.get("die_marker")), None)
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return E._generate_call(model, unit)


def test_a_worker_killed_mid_run_loses_nothing(cluster, tmp_path):
    model = load_cached(MODEL)
    settings = E.GenerationSettings(max_new_tokens=5, temperature=1.0, batch_size=2)
    marker = str(tmp_path / "killed")
    jobs = [
        E.ReplyJob(
            f"j{i}",
            make_messages(f"Say {i}."),
            seed=i,
            fields={"question_text": f"Say {i}.", "die_marker": marker if i == 5 else None},
        )
        for i in range(10)
    ]
    units = [(jobs[i : i + 2], settings, True) for i in range(0, 10, 2)]
    restarts = cluster.restarts
    results = dict(cluster.map(_die_once, units, model))
    assert os.path.exists(marker) and cluster.restarts == restarts + 1 and len(cluster.actors) == 2
    serial = dict(SerialExecutor().map(E._generate_call, units, model))
    assert results == serial


class _DriverKilledAfter:
    """Wraps an executor; the driver dies (an exception) after ``n`` units were written."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def map(self, fn, units, model):
        for count, item in enumerate(self.inner.map(fn, units, model)):
            if count == self.n:
                raise KeyboardInterrupt
            yield item


def test_a_killed_driver_resumes_to_the_serial_result(cluster, tmp_path):
    serial = _extract(tmp_path / "serial")
    with pytest.raises(KeyboardInterrupt):
        _extract(tmp_path / "ray", executor=_DriverKilledAfter(cluster, 2))
    written = JsonlRecords(tmp_path / "ray" / "responses.jsonl").load()
    assert 0 < len(written) < 24
    _same_extraction(serial, _extract(tmp_path / "ray", executor=cluster))


def test_workers_must_load_the_runs_model(cluster):
    with pytest.raises(ValueError, match="same model name"):
        list(cluster.map(E._generate_call, [], load_cached("tiny-qwen2")))


def test_cli_extract_with_ray_equals_the_serial_cli(cluster, tmp_path, capsys):
    from persona_lens import cli

    common = [
        "extract",
        "shouting",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--judge",
        "rule",
        "--coherence",
        "rule",
        "--samples",
        "1",
        "--questions",
        "2",
        "--pairs",
        "2",
        "--max-new-tokens",
        "5",
        "--batch-size",
        "4",
        "--quiet",
        "--extract-coherence-threshold",
        "0",
        "--judge-cache",
        str(tmp_path / "judge.sqlite"),
    ]
    assert cli.main([*common, "--out", str(tmp_path / "serial")]) == 0
    # the module's cluster is up (its workers hold both CPUs): these workers take none
    assert cli.main([*common, "--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "1", "--ray-cpus", "0"]) == 0
    for positions in ("response", "prompt", "last_prompt"):
        a = load_vector(X.vector_path(tmp_path / "serial", positions))
        b = load_vector(X.vector_path(tmp_path / "ray", positions))
        torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)
    assert cli.main([*common, "--out", str(tmp_path / "bad"), "--ray", "--ray-workers", "0"]) == 2


def test_space_build_on_ray_equals_serial(cluster, tmp_path):
    from persona_lens.experiments import space as sp
    from persona_lens.traits.roles import load_roles
    from tests.experiments.test_space import _roles_dir

    model = load_cached(MODEL)
    roles = load_roles(directory=_roles_dir(tmp_path))

    def judges(role):
        return (RuleJudge(role.rule) if role.rule else None), RuleJudge("coherence")

    config = sp.SpaceConfig(
        max_new_tokens=6, n_samples=2, temperature=1.0, batch_size=2, role_threshold=0, coherence_threshold=0
    )
    spaces = [
        sp.build_space(
            model, roles, judges=judges, config=config, out_dir=tmp_path / label, cap_controls=3, executor=executor
        )
        for label, executor in (("serial", None), ("ray", cluster))
    ]
    for name in ("role_vectors", "default_activations", "axis", "components", "token_quantiles", "control_quantiles"):
        torch.testing.assert_close(getattr(spaces[0], name), getattr(spaces[1], name), rtol=0, atol=0)
    for role in roles.roles:
        assert (
            JsonlRecords(tmp_path / "serial/roles" / role.name / "responses.jsonl").load()
            == JsonlRecords(tmp_path / "ray/roles" / role.name / "responses.jsonl").load()
        )


def test_cli_space_build_with_ray_equals_the_serial_cli(cluster, tmp_path):
    from persona_lens import cli
    from persona_lens.experiments.space import PersonaSpace
    from tests.experiments.test_space import _roles_dir

    common = [
        "space",
        "build",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--roles-dir",
        str(_roles_dir(tmp_path)),
        "--max-new-tokens",
        "5",
        "--samples",
        "2",
        "--temperature",
        "1",
        "--role-threshold",
        "0",
        "--coherence-threshold",
        "0",
        "--random",
        "5",
        "--cap-controls",
        "2",
        "--quiet",
        "--judge-cache",
        str(tmp_path / "judge.sqlite"),
    ]
    assert cli.main([*common, "--out", str(tmp_path / "serial")]) == 0
    # the module's cluster is up (its workers hold both CPUs): these workers take none
    assert cli.main([*common, "--out", str(tmp_path / "ray"), "--ray", "--ray-workers", "1", "--ray-cpus", "0"]) == 0
    serial, parallel = (PersonaSpace.load(tmp_path / label / "space.safetensors") for label in ("serial", "ray"))
    for name in ("role_vectors", "axis", "components", "token_quantiles", "control_quantiles"):
        torch.testing.assert_close(getattr(serial, name), getattr(parallel, name), rtol=0, atol=0)
