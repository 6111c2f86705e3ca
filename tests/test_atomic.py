"""Atomic writes of final artifacts (taro_ext/atomic.py): an interrupted write leaves the old file
or directory complete, never a mix; nothing is left beside the target."""
import os

import pytest

from taro_ext import atomic


class Killed(BaseException):
    pass


def test_write_text_interrupted_keeps_the_old_file(tmp_path):
    path = tmp_path / "train_log.json"
    atomic.write_text(str(path), '{"old": 1}')

    def dies(tmp):
        with open(tmp, "w") as f:
            f.write('{"new": ')  # half written
        raise Killed()

    with pytest.raises(Killed):
        atomic.write_file(str(path), dies)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["train_log.json"]
    atomic.write_text(str(path), '{"new": 2}')
    assert path.read_text() == '{"new": 2}' and os.listdir(tmp_path) == ["train_log.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_directory_swaps_whole_directories(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # systems without RENAME_EXCHANGE
    target = tmp_path / "art"

    def fill(files):
        def write(tmp):
            for name, text in files.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
        return write

    is_artifact = lambda d: os.path.isfile(os.path.join(d, "a"))  # noqa: E731
    atomic.replace_directory(str(target), fill({"a": "1", "b": "1"}), is_artifact=is_artifact)
    (target / "checkpoint-2").mkdir()
    atomic.replace_directory(str(target), fill({"a": "2"}), is_artifact=is_artifact, carry=("checkpoint-*",))
    assert sorted(os.listdir(target)) == ["a", "checkpoint-2"] and (target / "a").read_text() == "2"
    with pytest.raises(Killed):
        atomic.replace_directory(str(target), lambda tmp: (_ for _ in ()).throw(Killed()), is_artifact=is_artifact)
    assert (target / "a").read_text() == "2" and sorted(os.listdir(tmp_path)) == ["art"]
