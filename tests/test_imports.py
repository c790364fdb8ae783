"""The runtime stays light: importing edge_slim and answering a question never loads torch or tvm."""
import subprocess
import sys

from conftest import EXAMPLES

HEAVY = ("torch", "tvm", "tvm_ffi", "onnx", "onnxscript")

CHECK = """
import sys
{body}
heavy = [m for m in {heavy!r} if m in sys.modules]
assert not heavy, heavy
print("ok")
"""


def _run(body, heavy=HEAVY):
    body = body.replace("{img!r}", repr(str(EXAMPLES / "images" / "scene0.png")))
    p = subprocess.run([sys.executable, "-c", CHECK.format(body=body, heavy=heavy)], capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr


def test_import_and_ask_is_light():
    _run("import edge_slim\ns = edge_slim.load()\nprint(s.ask({img!r}, 'what color is the cone?').answer)")


def test_numpy_backend_needs_no_onnxruntime():
    _run("import edge_slim\ns = edge_slim.load(backend='numpy')\ns.ask({img!r}, 'is there a cube?')",
         heavy=HEAVY + ("onnxruntime",))


def test_cli_ask_is_light():
    _run("from edge_slim.cli.main import cli\n"
         "from edge_slim.cli.common import run_cli\n"
         "sys.argv = ['edge-slim', 'ask', {img!r}, 'what color is the cone?']\n"
         "assert run_cli(cli) == 0")


def test_cli_bench_is_light():
    _run("from edge_slim.cli.main import cli\n"
         "from edge_slim.cli.common import run_cli\n"
         "sys.argv = ['edge-slim', 'bench', '--rounds', '1', '--block', '1']\n"
         "assert run_cli(cli) == 0")
