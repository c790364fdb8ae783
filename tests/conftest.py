import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def shipped_dir() -> Path:
    from edge_slim.runtime.bundle import default_model_dir
    return default_model_dir()


def cli(*args, input=None, check=None, env=None):
    """Run the real CLI in a fresh process; returns CompletedProcess (text mode)."""
    e = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "edge_slim", *map(str, args)], capture_output=True,
                       input=input, env=e, timeout=600, text=input is None or isinstance(input, str))
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout, p.stderr)
    return p


def assert_clean_error(p, code):
    """One line on stderr naming the problem; no traceback."""
    err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode()
    assert p.returncode == code, (p.returncode, p.stdout, err)
    assert "Traceback" not in err, err
    assert err.strip(), "no message on stderr"


@pytest.fixture(scope="session")
def examples():
    return json.loads((EXAMPLES / "questions.json").read_text())


@pytest.fixture
def bundle_copy(tmp_path):
    """A private copy of the shipped bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(shipped_dir(), dst)
    return dst


@pytest.fixture(scope="session")
def dev_model(tmp_path_factory) -> Path:
    """A random-init SlimPajama-Tiny exported to ONNX once per session. $EDGE_SLIM_DEV_MODEL names one exported
    before: the rerun of the int8 tests on an emulated CPU (test_int8_arith.py) passes it, so as not to import
    torch under qemu."""
    if os.environ.get("EDGE_SLIM_DEV_MODEL"):
        return Path(os.environ["EDGE_SLIM_DEV_MODEL"])
    torch = pytest.importorskip("torch")
    from edge_slim.aot.model.export import to_onnx
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.scenes.grammar import ANSWERS, vocabulary

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        m = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS))).eval()
        path = tmp_path_factory.mktemp("dev") / "model.onnx"
        to_onnx(m, path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def dev_describe_bundle(tmp_path_factory) -> Path:
    """A random-init SlimPajama-Tiny WITH a describe head (describe_layers=2) exported by export_bundle once per
    session (model.onnx + describe_decoder.onnx + manifest). The caption head is made decisive and never picks
    eos, so captions run until the grammar's length limit (4-6 objects) and a difference between backends shows."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from edge_slim.aot.model.export import export_bundle
    from edge_slim.aot.model.slimpajama import SlimPajama, config_for
    from edge_slim.scenes import caption as C
    from edge_slim.scenes.grammar import ANSWERS, vocabulary

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        m = SlimPajama(config_for("tiny", vocab_size=len(vocabulary()), num_answers=len(ANSWERS),
                                  describe_layers=2)).eval()
        with torch.no_grad():
            m.decoder.head.weight.normal_(0, 1.0)
            m.decoder.head.bias[C.EOS] = -50.0
        out = tmp_path_factory.mktemp("dev-describe") / "bundle"
        export_bundle(m, out)
    finally:
        torch.set_num_threads(threads)
    return out
