import errno
import os
import stat
import subprocess

import pytest

from kit.errors import DiskFullError, KitError
from kit.rundir import atomic_save, atomic_write, write_bytes_atomic, write_json_atomic, write_text_atomic


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    for i, write in enumerate((write_text_atomic, lambda p, x: write_json_atomic(p, {"x": x}))):
        path = write(tmp_path / f"f{i}", "x")
        assert _mode(path) == 0o666 & ~mask  # not mkstemp's 0600: teammates sharing the run directory read it
        with open(tmp_path / f"ref{i}", "w"):
            pass
        assert _mode(path) == _mode(tmp_path / f"ref{i}")


def test_a_replaced_file_keeps_its_own_mode(tmp_path, umask):
    umask(0o022)
    path = write_text_atomic(tmp_path / "shared.csv", "a")
    os.chmod(path, 0o664)  # made group-writable on purpose
    write_text_atomic(path, "b")
    assert _mode(path) == 0o664 and path.read_text() == "b"


def _no_space(f):
    f.write(b"half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_raises_disk_full_and_changes_nothing(tmp_path):
    path = write_text_atomic(tmp_path / "summary.json", "previous")
    with pytest.raises(DiskFullError) as e:
        atomic_write(path, _no_space)
    assert str(e.value).startswith(f"no space left on device while writing {path}; nothing earlier was changed")
    assert isinstance(e.value, KitError) and isinstance(e.value, OSError)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # the temp file is gone
    with pytest.raises(DiskFullError, match="new.bin"):
        atomic_write(tmp_path / "new.bin", _no_space)
    assert not (tmp_path / "new.bin").exists()


def test_torch_save_on_a_full_disk_raises_disk_full(tmp_path):
    import io
    import torch

    class Filling(io.RawIOBase):  # a disk with 1 kB left, behind torch.save's own writer
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            self.n += len(b)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(b)

    path = atomic_save({"w": torch.zeros(3)}, tmp_path / "last.pt")
    with pytest.raises(DiskFullError, match="last.pt"):
        atomic_write(path, lambda f: torch.save({"w": torch.zeros(10_000)}, Filling(f)))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_other_errors_stay_what_they_are(tmp_path):
    def broken(f):
        raise ValueError("a bug")
    with pytest.raises(ValueError, match="a bug") as e:
        atomic_write(tmp_path / "x", broken)
    assert not isinstance(e.value, DiskFullError)
    with pytest.raises(PermissionError) as e:  # a full disk is ENOSPC only, not any OSError
        atomic_write(tmp_path / "y", lambda f: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")))
    assert not isinstance(e.value, DiskFullError) and list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 256 kB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_a_real_full_disk(small_disk):
    import torch
    text = write_text_atomic(small_disk / "folds.csv", "id,label,fold\n")
    ckpt = atomic_save({"w": torch.ones(4)}, small_disk / "last.pt")
    with pytest.raises(DiskFullError, match="folds.csv; nothing earlier was changed"):
        write_bytes_atomic(text, b"x" * 1_000_000)
    with pytest.raises(DiskFullError, match="last.pt; nothing earlier was changed"):
        atomic_save({"w": torch.ones(1_000_000)}, ckpt)  # 4 MB of float32
    assert text.read_text() == "id,label,fold\n"
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.ones(4))
    assert sorted(p.name for p in small_disk.iterdir()) == ["folds.csv", "last.pt"]
