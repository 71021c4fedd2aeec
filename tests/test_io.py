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


def test_dir_lock_refuses_a_second_writer_and_is_released(tmp_path):
    from scratchlm.io import DirLock

    with DirLock(tmp_path / "out", "a test run"):
        with pytest.raises(ScratchLMError, match=r"in use by another scratchlm process \(pid \d+, a test run\)"):
            DirLock(tmp_path / "out", "another run").acquire()
    with DirLock(tmp_path / "out", "a later run"):  # released on exit
        pass


def test_dir_lock_is_released_when_the_holder_dies(tmp_path):
    """A killed process leaves no stale lock: the kernel drops it with the process."""
    import subprocess
    import sys

    from scratchlm.io import DirLock

    code = f"from scratchlm.io import DirLock; DirLock({str(tmp_path)!r}, 'x').acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    DirLock(tmp_path, "after a dead holder").acquire().release()
