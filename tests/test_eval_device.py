"""eval.device / eval.dtype: auto follows the accelerator, CUDA-only values refuse clearly on CPU, and the
pipeline's eval, the shadow replay and `mixtune serve` all load their models with them."""

from __future__ import annotations

import pytest
import torch

from mixtune.cli import main
from mixtune.config import PipelineConfig, load_config
from mixtune.errors import ConfigError, MixtuneError
from mixtune.eval import backends
from mixtune.eval.backends import HFBackend
from mixtune.eval.devices import resolve_device, resolve_dtype
from mixtune.model.tiny import make_test_model

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp("tiny") / "model")


def test_auto_follows_the_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_dtype("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and resolve_device("CUDA:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda:1") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cuda") == "fp16"
    assert resolve_dtype("fp32", "cuda") == "fp32"
    with pytest.raises(MixtuneError, match="only 2 CUDA") as e:
        resolve_device("cuda:2")
    assert e.value.where == "eval.device"


def test_cuda_values_refuse_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(MixtuneError, match="needs a CUDA GPU") as e:
            resolve_device(dev)
        assert e.value.where == "eval.device"
    with pytest.raises(MixtuneError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(MixtuneError, match="unknown dtype") as e:
        resolve_dtype("int8", "cpu")
    assert e.value.where == "eval.dtype"


def test_config_accepts_device_and_names_eval_device_when_unknown(tmp_path):
    cfg = PipelineConfig.model_validate({"eval": {"device": "CUDA:1", "dtype": "bf16"}})
    assert (cfg.eval.device, cfg.eval.dtype) == ("cuda:1", "bf16")
    assert (PipelineConfig().eval.device, PipelineConfig().eval.dtype) == ("auto", "auto")
    y = tmp_path / "p.yaml"
    y.write_text("eval: {device: gpu}\n")
    with pytest.raises(ConfigError, match=r"eval\.device: .*auto, cpu, cuda, cuda:N or mps \(got 'gpu'\)"):
        load_config(y)
    with pytest.raises(ConfigError, match=r"eval\.dtype"):
        load_config(y, ["eval.device=cpu", "eval.dtype=int4"])


def test_backend_loads_on_the_resolved_device_and_dtype(tiny):
    b = HFBackend(tiny, device="auto", dtype="auto", batch_size=2)
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert b.device == want and next(b.model.parameters()).device.type == want
    assert b.dtype == ("fp32" if want == "cpu" else b.dtype)
    half = HFBackend(tiny, device="cpu", dtype="bf16", batch_size=2)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert isinstance(half.generate([[{"role": "user", "content": "计算"}]], max_new_tokens=3)[0], str)


@pytest.mark.skipif(not NO_CUDA, reason="asserts the refusal on a machine without CUDA; this one has a GPU")
def test_backend_refuses_cuda_before_loading(tiny):
    with pytest.raises(MixtuneError, match="needs a CUDA GPU") as e:
        HFBackend(tiny, device="cuda")
    assert e.value.where == "eval.device"


class Recorder:
    """Stands in for HFBackend and records how it was constructed."""

    calls: list[dict] = []

    def __init__(self, path, **kw):
        Recorder.calls.append({"path": str(path), **kw})
        raise RuntimeError("recorded")


def test_pipeline_eval_and_shadow_replay_pass_device_and_dtype(monkeypatch, tmp_path):
    from mixtune import pipeline
    from mixtune.release import pipeline_steps

    cfg = PipelineConfig.model_validate({"eval": {"device": "cuda:1", "dtype": "fp16", "batch_size": 3}})
    Recorder.calls = []
    monkeypatch.setattr(pipeline, "HFBackend", Recorder)
    with pytest.raises(RuntimeError, match="recorded"):
        pipeline.eval_backend(cfg, "stage1", "/m/stage1")
    assert Recorder.calls == [{"path": "/m/stage1", "device": "cuda:1", "dtype": "fp16", "batch_size": 3}]

    # the canary's offline replay builds its backends from the same settings
    from helpers.synth import make_samples

    from mixtune.data.io import write_samples

    rd = type("RD", (), {"path": tmp_path})()
    (tmp_path / "data").mkdir()
    samples = [s.model_copy(update={"split": "test"}) for s in make_samples(n_per_task=2, twins=False)]
    write_samples(samples, tmp_path / "data" / "samples.parquet")
    replay_cfg = cfg.model_copy(update={"gates": cfg.gates.model_copy(
        update={"rollout": cfg.gates.rollout.model_copy(update={"enabled": False})})})
    Recorder.calls = []
    monkeypatch.setattr(backends, "HFBackend", Recorder)
    with pytest.raises(RuntimeError, match="recorded"):
        pipeline_steps.canary_decision(replay_cfg, rd, 1, "/m/champion")
    assert Recorder.calls[0] == {"path": "/m/champion", "device": "cuda:1", "dtype": "fp16", "batch_size": 3}

    # ... and the staged rollout starts its `mixtune serve` processes with them
    from mixtune.release import rollout

    seen = {}

    def fake_rollout(champion, candidate, **kw):
        seen.update(kw)
        raise RuntimeError("recorded")

    monkeypatch.setattr(rollout, "run_rollout", fake_rollout)
    import mixtune.data.ontology as onto_mod
    import mixtune.rules as rules_mod

    monkeypatch.setattr(onto_mod, "load_ontology", lambda p: None)
    monkeypatch.setattr(rules_mod.RuleSet, "load", staticmethod(lambda p: None))
    monkeypatch.setattr(rules_mod, "RuleEngine", lambda rs: None)
    with pytest.raises(RuntimeError, match="recorded"):
        pipeline_steps.canary_decision(cfg, rd, 1, "/m/champion")
    assert (seen["device"], seen["dtype"]) == ("cuda:1", "fp16")


def test_rollout_passes_device_and_dtype_to_serve(monkeypatch, tmp_path):
    from mixtune.release import rollout

    argv = []

    class Proc:
        def __init__(self, name, args, log, env):
            argv.append(args)

        def wait_ready(self, timeout):
            raise MixtuneError("stop here")

        def stop(self, *a, **k):
            pass

        def __getattr__(self, name):  # any other cleanup call is a no-op
            return lambda *a, **k: None

    monkeypatch.setattr(rollout, "ManagedProcess", Proc)
    monkeypatch.setattr(rollout, "RolloutAnalyzer", lambda *a, **k: None)  # not reached: no process starts
    monkeypatch.setattr(rollout, "SimulatedUser", lambda *a, **k: None)
    with pytest.raises(MixtuneError):
        rollout.run_rollout("/m/a", "/m/b", traffic=[object()], session_samples=[], ontology=None, engine=None,
                            kpi_fn=lambda *a: 0.0, out_dir=tmp_path / "o", db_path=tmp_path / "s.db", steps=[5.0],
                            requests_per_step=1, sessions_per_step=0, session_turns=1, feedback_noise=0.0,
                            max_new_tokens=4, concurrency=1, thresholds=None, dtype="bf16", device="cuda:1")
    assert argv and all(a[a.index("--device") + 1] == "cuda:1" and a[a.index("--dtype") + 1] == "bf16"
                        for a in argv)


def test_serve_cli_device_errors_are_one_line_exit_2(tiny, capsys):
    def serve(*args: str) -> str:
        with pytest.raises(SystemExit) as e:
            main(["serve", str(tiny), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "Traceback" not in err
        return err

    err = serve("--device", "gpu")
    assert "--device" in err and "unknown device 'gpu'" in err
    assert "--dtype" in serve("--dtype", "int8")
    if NO_CUDA:
        assert "needs a CUDA GPU" in serve("--device", "cuda:0")
