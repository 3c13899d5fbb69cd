"""The filesystem layer: atomic files and folders, stale leftovers, `~` expanded."""

import os

import pytest

from tests.conftest import ROOT, cli_args, run_cli, small_config
from trainer import filesystem


def test_publish_dir_keeps_the_old_folder_when_writing_fails(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "keep.txt").write_text("old")

    def fail(tmp):
        open(os.path.join(tmp, "half.txt"), "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        filesystem.publish_dir(str(folder), fail)
    assert os.listdir(folder) == ["keep.txt"] and os.listdir(tmp_path) == ["export"]


def test_publish_dir_swaps_in_one_step_and_removes_leftovers(tmp_path):
    folder = tmp_path / "export"
    filesystem.publish_dir(str(folder), lambda tmp: open(os.path.join(tmp, "v1"), "w").close())
    (tmp_path / "export.tmp-killed").mkdir()  # what a killed publish leaves
    inode = os.stat(folder).st_ino
    filesystem.publish_dir(str(folder), lambda tmp: open(os.path.join(tmp, "v2"), "w").close())
    assert sorted(os.listdir(folder)) == [filesystem.COMPLETE_MARKER, "v2"] and os.stat(folder).st_ino != inode
    assert os.listdir(tmp_path) == ["export"]
    assert filesystem.read_json(str(folder / filesystem.COMPLETE_MARKER))["files"] == {"v2": 0}


def test_publish_dir_without_exchange_puts_the_old_folder_back(tmp_path, monkeypatch):
    """Filesystems without renameat2: two renames, and a failed second one undoes the first."""
    folder = tmp_path / "export"
    filesystem.publish_dir(str(folder), lambda tmp: open(os.path.join(tmp, "v1"), "w").close())
    monkeypatch.setattr(filesystem, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        filesystem.publish_dir(str(folder), lambda tmp: open(os.path.join(tmp, "v2"), "w").close())
    assert sorted(os.listdir(folder)) == [filesystem.COMPLETE_MARKER, "v1"]
    monkeypatch.setattr(os, "rename", real_rename)
    filesystem.publish_dir(str(folder), lambda tmp: open(os.path.join(tmp, "v3"), "w").close())
    assert sorted(os.listdir(folder)) == [filesystem.COMPLETE_MARKER, "v3"] and os.listdir(tmp_path) == ["export"]


def test_publish_dir_recovers_a_folder_killed_between_two_renames(tmp_path):
    (tmp_path / "export.old-x" / "export").mkdir(parents=True)
    (tmp_path / "export.old-x" / "export" / "v1").write_text("")
    filesystem.publish_dir(str(tmp_path / "other"), lambda tmp: None)  # another folder: untouched
    assert (tmp_path / "export.old-x" / "export" / "v1").exists()

    def fail(tmp):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        filesystem.publish_dir(str(tmp_path / "export"), fail)
    assert os.listdir(tmp_path / "export") == ["v1"]  # the old export, put back


def test_write_file_leaves_no_half_file(tmp_path):
    path = tmp_path / "report.json"
    filesystem.write_json(str(path), {"a": 1})

    def crash(tmp):
        open(tmp, "w").write('{"half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        filesystem.write_file(str(path), crash)
    assert filesystem.read_json(str(path)) == {"a": 1} and os.listdir(tmp_path) == ["report.json"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~filesystem._UMASK  # not mkstemp's 0600


def test_tilde_is_expanded_and_no_folder_named_tilde_appears(tmp_path, corpus_file, tiny_model_dir):
    """The README's own `--config.model.name_or_path=~/...` (bash leaves ~ alone after `=`),
    with bootstrap_tiny, which once built the model in a folder literally named `~`."""
    home = tmp_path / "home"
    home.mkdir()
    config = small_config(tmp_path / "unused", corpus_file, tiny_model_dir)
    args = cli_args(config, output_dir="~/runs/tilde", **{"model.name_or_path": "~/models/tiny",
                                                          "model.bootstrap_tiny": True,
                                                          "model.tiny.n_layer": 1, "model.tiny.n_embd": 32,
                                                          "model.tiny.vocab_size": 300,
                                                          "model.tiny.n_positions": 64, "train.max_steps": 4,
                                                          "preflight": "off"})
    result = run_cli("trainer.task", *args, env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (home / "models" / "tiny" / "tf_model.h5").exists()
    assert (home / "runs" / "tilde" / "report.json").exists()
    assert not os.path.exists(os.path.join(ROOT, "~"))
    doctor = run_cli("trainer.doctor", *args, env={"HOME": str(home)})
    assert doctor.returncode == 0 and (home / "runs" / "tilde" / "doctor.json").exists()
    assert not os.path.exists(os.path.join(ROOT, "~"))
