"""`retinanet.hardware`: native bfloat16 detection, `--precision=auto`, and a fit under
mixed_bfloat16 (issue 30)."""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from retinanet import hardware

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Two logical CPUs of a Sapphire Rapids (trimmed) and one of a Skylake server.
WITH_BF16 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX512_BF16_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
WITHOUT_BF16 = """processor\t: 0
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512bw avx512_vnni
vmx flags\t: vnmi preemption_timer amx_bf16_not_a_cpu_flag
"""


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)
    return write


@pytest.fixture
def linux(monkeypatch):
    monkeypatch.setattr(hardware.sys, "platform", "linux")


def test_bf16_flags_are_read_from_the_flags_lines(cpuinfo, linux):
    assert hardware.cpu_bf16_flags(cpuinfo(WITH_BF16)) == ("avx512_bf16", "amx_bf16")
    assert hardware.cpu_has_native_bf16(cpuinfo(WITH_BF16))
    assert hardware.cpu_bf16_flags(cpuinfo(AVX512_BF16_ONLY)) == ("avx512_bf16",)
    # Only whole flags of the "flags" lines count, not other lines or longer names.
    assert hardware.cpu_bf16_flags(cpuinfo(WITHOUT_BF16)) == ()
    assert not hardware.cpu_has_native_bf16(cpuinfo(WITHOUT_BF16))


def test_missing_or_unreadable_cpuinfo_or_another_os_means_no_bf16(cpuinfo, tmp_path,
                                                                    monkeypatch, linux):
    assert not hardware.cpu_has_native_bf16(str(tmp_path / "missing"))
    assert not hardware.cpu_has_native_bf16(str(tmp_path))  # a folder: unreadable
    monkeypatch.setattr(hardware.sys, "platform", "darwin")
    assert not hardware.cpu_has_native_bf16(cpuinfo(WITH_BF16))


def test_auto_resolves_by_device_and_cpu(cpuinfo, linux):
    bf16 = cpuinfo(WITH_BF16)
    plain = str(pathlib.Path(bf16).with_name("none"))  # missing: no bf16
    assert hardware.resolve_precision("auto", gpus=0, cpuinfo=bf16) == \
        ("mixed_bfloat16", "auto: the CPU has AVX512_BF16, AMX_BF16")
    policy, reason = hardware.resolve_precision("auto", gpus=0, cpuinfo=plain)
    assert policy == "float32" and "no native bfloat16" in reason
    # A GPU or a TPU keeps float32, as before "auto", whatever the CPU.
    policy, reason = hardware.resolve_precision("auto", gpus=2, cpuinfo=bf16)
    assert policy == "float32" and "2 GPUs" in reason
    assert hardware.resolve_precision("auto", gpus=0, tpu=True, cpuinfo=bf16)[0] == "float32"
    # A policy given by name is kept, on any machine.
    for name in ("float32", "mixed_float16", "mixed_bfloat16"):
        assert hardware.resolve_precision(name, gpus=0, cpuinfo=plain) == (name, "as requested")
    with pytest.raises(ValueError, match="precision"):
        hardware.resolve_precision(None)


def test_importing_hardware_imports_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, retinanet.hardware; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "False"


def test_the_command_line_and_train_accept_auto():
    from retinanet.apps import cli
    from retinanet.training import trainer

    assert "auto" in cli.FLAGS["precision"].parser.enum_values
    assert "auto" in trainer.PRECISIONS and trainer.DEFAULT_PRECISION == "float32"
    with pytest.raises(ValueError, match="--precision=float8"):
        trainer.train(None, "unused", precision="float8")


def _tiny_config():
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def policy():
    """Restores the global Keras policy the test changes."""
    import keras

    before = keras.mixed_precision.global_policy().name
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(before)


@pytest.mark.slow
def test_a_tiny_model_trains_under_mixed_bfloat16_and_predicts_float32(policy, tmp_path):
    import keras

    from retinanet.training import builders

    policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    config = _tiny_config()
    model = builders.build_model(config, num_classes=2)
    builders.compile_model(model, config, total_steps=100)
    assert model.backbone.compute_dtype == "bfloat16"
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 128, 128, 3)).astype("float32")
    boxes = np.array([[[10, 20, 60, 90], [70, 30, 120, 80]]] * 4, "float32")
    classes = np.array([[0, 1]] * 4, "int32")
    history = model.fit(images, {"boxes": boxes, "classes": classes}, epochs=15, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    detections = model.predict(images, verbose=0)
    for key in ("boxes", "scores"):
        assert detections[key].dtype == np.float32, key
        assert np.all(np.isfinite(detections[key])), key
    # The checkpoint loads and predicts under another global policy (`retinanet export`
    # sets none): the FPN's upsampling once took the global policy and added float32 to bf16.
    model.save(tmp_path / "bf16.keras")
    policy("float32")
    loaded = keras.saving.load_model(tmp_path / "bf16.keras")
    again = loaded.predict(images, verbose=0)
    assert again["scores"].dtype == np.float32
    np.testing.assert_allclose(again["scores"], detections["scores"], atol=0.02)
    # Exports run on a float32 copy (ONNX Runtime and LiteRT refuse bf16 graphs).
    from retinanet.export import float32_copy

    copy = float32_copy(model)
    assert copy is not model and copy.backbone.compute_dtype == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), model.get_weights()))
    np.testing.assert_allclose(copy.predict(images, verbose=0)["scores"], detections["scores"],
                               atol=0.02)
    assert float32_copy(copy) is copy


@pytest.mark.slow
def test_train_with_auto_reports_the_policy_and_writes_it_to_run_json(policy, tmp_path,
                                                                      capsys):
    from retinanet.training import trainer

    config = _tiny_config()
    config.train.epochs, config.train.eval_every_n_epochs = 1, 0
    trainer.train(config, str(tmp_path / "run"), precision="auto", verbose=0)
    expected, reason = hardware.resolve_precision("auto")
    header = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("Training tiny")]
    assert len(header) == 1 and f"precision {expected} ({reason})" in header[0]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["precision"]["requested"] == "auto"
    assert run["precision"]["policy"] == expected and run["precision"]["reason"] == reason
