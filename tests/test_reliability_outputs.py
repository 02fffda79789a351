"""Issue #28, part 1: no output over an input (by content), one line rule, multi-file outputs
swapped in whole, pipes, and the smaller leftovers (docs/design.md §7)."""
import os

import pytest
import torch

from neuronspec.files import check_output_file, check_output_folder, file_kind, lines_text, save_file, text_lines


# ---------------------------------------------------------------------------- shared helpers
def test_text_lines_split_on_newline_only():
    text = "a\rb\x0cc\u2028d\x85e\r\nf\n\ng"
    assert text_lines(text) == ["a\rb\x0cc\u2028d\x85e", "f", "", "g"]
    assert text_lines(lines_text(["x\r", "y\nz", ""]), crlf=False) == ["x\r", "y z", ""]
    assert text_lines("") == [] and text_lines("\n") == [""]


def test_file_kind_by_content_not_name(tmp_path):
    save_file({"format": "neuronspec-counts", "counts": {}}, tmp_path / "masks.pt")
    save_file({"format": "neuronspec-masks"}, tmp_path / "counts.txt")
    save_file({"format": 1, "model": {"w": torch.zeros(2)}, "model_config": {}}, tmp_path / "a.txt")
    (tmp_path / "t.pt").write_text("hello\n")
    (tmp_path / "b").write_bytes(b"\x00\xff\xfe" * 100)
    (tmp_path / "e").write_bytes(b"")
    assert [file_kind(tmp_path / n) for n in ("masks.pt", "counts.txt", "a.txt", "t.pt", "b", "e", "none")] == \
        ["counts", "masks", "checkpoint", "text", "binary", "empty", None]
    assert file_kind(tmp_path) == "folder"


def test_check_output_file(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("x\n")
    os.link(src, tmp_path / "hard.txt")
    os.symlink(src, tmp_path / "soft.txt")
    for same in (src, tmp_path / "hard.txt", tmp_path / "soft.txt", tmp_path / "sub" / ".." / "in.txt"):
        with pytest.raises(ValueError, match="is the input"):
            check_output_file(same, "output", [src], kind="text", overwrite=True)
    with pytest.raises(ValueError, match=r"already holds text \(e.g. a corpus file\).*--overwrite"):
        check_output_file(tmp_path / "hard.txt", "output", [], kind="text")
    check_output_file(tmp_path / "hard.txt", "output", [], kind="text", overwrite=True)
    save_file({"format": "neuronspec-counts", "counts": {}}, tmp_path / "c.pt")
    check_output_file(tmp_path / "c.pt", "out", [], kind="counts")  # a previous result of the same kind
    with pytest.raises(ValueError, match="out: .*c.pt already holds a counts file; pass --overwrite to replace it with a masks file"):
        check_output_file(tmp_path / "c.pt", "out", [], kind="masks")
    check_output_file(tmp_path / "new.pt", "out", [src], kind="masks")


def test_check_output_folder(tmp_path):
    (tmp_path / "run").mkdir()
    ckpt = tmp_path / "run" / "checkpoint_last.pt"
    ckpt.write_bytes(b"PK\x03\x04")
    for out in (tmp_path / "run", tmp_path):
        with pytest.raises(ValueError, match="holds the input"):
            check_output_folder(out, "out", [ckpt], owned=lambda p: True, command="evaluate", overwrite=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write; pass --overwrite"):
        check_output_folder(tmp_path / "other", "out", [ckpt], owned=lambda p: False, command="evaluate")
    check_output_folder(tmp_path / "other", "out", [ckpt], owned=lambda p: False, command="evaluate", overwrite=True)
    check_output_folder(tmp_path / "fresh", "out", [ckpt], owned=lambda p: False, command="evaluate")
