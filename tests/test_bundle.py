"""Bundle verification: every checksum is checked before anything is loaded."""
import json
import tarfile

import pytest

from edge_slim.errors import ModelError
from edge_slim.runtime.bundle import open_bundle, staging_dir, write_manifest


def test_shipped_bundle_verifies():
    b = open_bundle()
    assert b.manifest["name"] == "slimpajama-tiny" and b.model_path.is_file()
    total = sum(f["bytes"] for f in b.manifest["files"].values())
    assert total < 25e6  # the budget for shipped files


def test_extra_byte_is_caught(bundle_copy):
    with open(bundle_copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="checksum"):
        open_bundle(bundle_copy)


def test_missing_file_is_caught(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        open_bundle(bundle_copy)


def test_path_escape_is_refused(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="outside"):
        open_bundle(bundle_copy)


def test_schema_mismatch(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["schema"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="schema"):
        open_bundle(bundle_copy)


def test_archive_bundle(bundle_copy, tmp_path):
    arc = tmp_path / "model.tar"
    with tarfile.open(arc, "w") as tf:
        tf.add(bundle_copy, arcname="slimpajama-tiny")
    b = open_bundle(arc)
    assert b.manifest["name"] == "slimpajama-tiny"


def test_staging_dir_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staging_dir(dest) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("boom")
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_staging_dir_replaces_atomically(tmp_path):
    dest = tmp_path / "out"
    for v in ("1", "2"):
        with staging_dir(dest) as tmp:
            (tmp / "v").write_text(v)
            write_manifest(tmp, {"x": v})
    assert (dest / "v").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
