import os
import stat

import pytest

from scratchlm.errors import ScratchLMError
from scratchlm.io import atomic_dir, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_write(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


def test_outputs_get_umask_modes_not_private_temp_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f.txt", "w") as f:
            f.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_refuses_existing_and_cleans_up(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ScratchLMError, match="already exists"):
        with atomic_dir(tmp_path / "d"):
            pass
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "e") as d:
        (d / "x").write_text("partial")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
