"""``files.replaced_atomically``: a file appears whole or not at all."""

import json

import numpy as np
import pytest

from taco_jax import files


def test_written_file_replaces_the_old_one_and_no_temporary_stays(tmp_path):
    path = tmp_path / "sub" / "masks.npz"
    with files.replaced_atomically(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npz" and tmp.name.startswith(".")
        np.savez(tmp, a=np.arange(3))  # numpy adds ".npz" unless the name has it
    assert np.array_equal(np.load(path)["a"], np.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["masks.npz"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "report.json"
    files.write_json(path, {"top1": 0.5})
    with pytest.raises(ValueError, match="check failed"), files.replaced_atomically(path) as tmp:
        tmp.write_text("half")
        raise ValueError("check failed")
    assert json.loads(path.read_text()) == {"top1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_write_json_takes_numpy_scalars(tmp_path):
    files.write_json(tmp_path / "r.json", {"x": np.float32(0.25), "n": 3}, indent=None)
    assert (tmp_path / "r.json").read_text() == '{"x": 0.25, "n": 3}'
