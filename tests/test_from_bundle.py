"""A shipped fp32 bundle rebuilt as a torch model (aot/model/from_bundle.py) computes what the bundle computes."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import shipped_dir  # noqa: E402


@pytest.fixture(scope="module")
def rebuilt():
    from edge_slim.aot.model.from_bundle import model_from_bundle
    torch.set_num_threads(1)
    return model_from_bundle(shipped_dir())


def test_rebuilt_model_matches_onnx_runtime_on_the_bundle(rebuilt):
    from edge_slim.aot.model.from_bundle import parity
    assert rebuilt.new_parameters == ["logit_scale"]  # train-only: not in the exported graph
    assert parity(rebuilt, shipped_dir(), n=3) < 1e-4


def test_rebuilt_caption_decoder_matches_the_bundles_describe_graph(rebuilt):
    import json

    from edge_slim.aot.model.export import describe_parity
    spec = json.loads((shipped_dir() / "manifest.json").read_text()).get("describe")
    if not spec:
        pytest.skip("the shipped bundle has no describe head")
    assert rebuilt.decoder is not None
    assert describe_parity(rebuilt, shipped_dir() / spec["graph"], n=2, decoding=spec["decoding"]) < 1e-4


def test_calibrated_batchnorm_keeps_the_function_and_trains_near_it(rebuilt):
    from edge_slim.aot.model.export import example_inputs
    from edge_slim.aot.model.from_bundle import calibrate_batchnorm
    g = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 96, 96, generator=g)
    image, tokens = example_inputs(rebuilt, 0)
    with torch.no_grad():
        before = rebuilt.eval()(image, tokens)[0]
        calibrate_batchnorm(rebuilt, images)
        after = rebuilt.eval()(image, tokens)[0]
        feats_eval = rebuilt.stem.eval()(images)
        feats_train = rebuilt.stem.train()(images)  # batch statistics = the calibration statistics here
    rebuilt.eval()
    assert np.abs(before.numpy() - after.numpy()).max() < 1e-3
    assert np.abs(feats_eval.numpy() - feats_train.numpy()).max() < 1e-2 * float(feats_eval.abs().max())


def test_a_quantized_bundle_is_refused(tmp_path):
    import json
    import shutil
    from edge_slim.aot.model.from_bundle import model_from_bundle
    int8 = shipped_dir().parent / "slimpajama-tiny-int8"
    dst = tmp_path / "b"
    shutil.copytree(int8, dst)
    assert json.loads((dst / "manifest.json").read_text()).get("quantization")
    with pytest.raises(ValueError, match="not an fp32 bundle"):
        model_from_bundle(dst)


def test_train_init_from_a_missing_path_or_another_config_is_one_line(tmp_path):
    from conftest import assert_clean_error, cli
    base = ("train", "--steps", "1", "--scenes", "100", "--cache-dir", tmp_path / "c", "--eval-every", "0")
    assert_clean_error(cli(*base, "--init-from", tmp_path / "nope", "--out", tmp_path / "a"), 3)
    p = cli(*base, "--size", "small", "--init-from", shipped_dir(), "--out", tmp_path / "b")
    assert_clean_error(p, 3)
    assert "has config" in p.stderr
    assert not (tmp_path / "c").exists()  # refused before any scene was rendered
