"""Atomic output: an interrupted or failed write keeps the old file and leaves no temp file."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from xbatch import cli
from xbatch._atomic import atomic_output

PACK = ["pack", "--num-documents", "300", "--no-progress", "-o"]


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def write_good_output(path):
    np.savez(path, good=np.arange(5))
    return path.read_bytes()


def test_success_replaces_the_file_with_umask_permissions(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_output(path) as file:
        file.write(b"new")
        assert path.read_bytes() == b"old"  # nothing visible before the rename
    assert path.read_bytes() == b"new" and leftovers(tmp_path) == []
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("exception", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failure_keeps_the_old_file(tmp_path, exception):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(exception)):
        with atomic_output(path) as file:
            file.write(b"partial")
            raise exception
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_pack_on_a_full_disk_keeps_the_old_output(tmp_path, monkeypatch, capsys):
    output = tmp_path / "out.npz"
    old = write_good_output(output)
    real_write_array = np.lib.format.write_array
    count = []

    def write_array(file, array, *args, **kwargs):  # two arrays written, then the disk fills
        count.append(1)
        if len(count) == 3:
            file.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_array(file, array, *args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    status = cli.main([*PACK, str(output)])
    err = capsys.readouterr().err
    assert status == 1 and "No space left on device" in err and err.count("\n") == 1, err
    assert output.read_bytes() == old and leftovers(tmp_path) == []


# Sends itself SIGINT in the middle of writing the third array, as Ctrl-C would.
INTERRUPT_MID_WRITE = """
import signal, sys
import numpy.lib.format as fmt
from xbatch import cli
signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal, even if started in the background
real = fmt.write_array
count = [0]
def write_array(fp, array, *args, **kwargs):
    count[0] += 1
    if count[0] == 3:
        fp.write(b"x" * 100)
        signal.raise_signal(signal.SIGINT)  # to this thread, now (os.kill may pick another thread)
    return real(fp, array, *args, **kwargs)
fmt.write_array = write_array
sys.exit(cli.main(sys.argv[1:]))
"""


def test_pack_interrupted_mid_write_keeps_the_old_output(tmp_path):
    output = tmp_path / "out.npz"
    old = write_good_output(output)
    result = subprocess.run([sys.executable, "-c", INTERRUPT_MID_WRITE, *PACK, str(output)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "xbatch pack: interrupted"
    assert output.read_bytes() == old and leftovers(tmp_path) == []
