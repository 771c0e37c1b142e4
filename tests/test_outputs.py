"""What a command writes (app/files.py's rule, docs/training.md "Where outputs go"): a device, a
FIFO or a folder in the way is refused in one line and left as it was; a symbolic link is written
through to its target, which is replaced atomically; an output that is one of the command's own
inputs (by device and inode: another name or a link counts) is refused before anything is read.
Every writing command is tried on real special files made here.
"""
import importlib.util
import os
import shutil
import stat

import numpy as np
import pytest

from alexnet.app import checkpoint as ckpt
from alexnet.app import experiments, files
from alexnet.app.cli import main
from alexnet.app.errors import UserError
from conftest import make_folder, small_argv

HAVE_ONNX = importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run (alexnet-small, one epoch) and an image of its data."""
    base = tmp_path_factory.mktemp("outputs")
    data = make_folder(base / "data", n_train=6, n_val=2, size=40)
    run_dir = str(base / "run")
    assert main(["train", "--data", data, "--epochs", "1", "--out", run_dir, *small_argv(workers=0)]) == 0
    return run_dir, os.path.join(run_dir, "checkpoints", "best.npz"), data, os.path.join(data, "val", "a", "0.jpg")


def special_file(path, kind):
    """A FIFO, or a character device (/dev/null's numbers) where this process may make one."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError) as e:
            pytest.skip(f"cannot make a device node here ({e.strerror}: mknod needs root or CAP_MKNOD)")
    return str(path)


def error_line(capsys, argv):
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alexnet: error: "), err
    return err


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_no_command_writes_over_a_device_or_a_fifo(run, tmp_path, capsys, kind):
    run_dir, ckpt_path, data, image = run
    node = special_file(tmp_path / "node", kind)
    is_kind = stat.S_ISFIFO if kind == "fifo" else stat.S_ISCHR
    said = f"{node} exists and is {'a FIFO' if kind == 'fifo' else 'a character device'}, not a regular file"
    (tmp_path / "s").mkdir()
    os.link(node, tmp_path / "s" / "0.saliency.png")
    commands = [["import", image, "--out", node],
                ["neighbors", "--checkpoint", ckpt_path, "--data", data, image, "--out", node],
                ["saliency", "--checkpoint", ckpt_path, image, "--out", str(tmp_path / "s")]]
    if HAVE_ONNX:
        commands.append(["export", "--onnx", node, "--checkpoint", ckpt_path])
    for argv in commands:
        line = error_line(capsys, argv)
        assert "is a FIFO, not a regular file" in line or "is a character device, not a regular file" in line
    assert said in error_line(capsys, ["export" if HAVE_ONNX else "import", *(
        ["--onnx", node, "--checkpoint", ckpt_path] if HAVE_ONNX else [image, "--out", node])])
    # plot's two pictures, the run files of a training run, an experiment's report
    plots = os.path.join(run_dir, "plots")
    os.makedirs(plots, exist_ok=True)
    os.link(node, os.path.join(plots, "curves.png"))
    try:
        assert "curves.png exists and is" in error_line(capsys, ["plot", run_dir])
    finally:
        shutil.rmtree(plots)
    for name in ("log.jsonl", "config.json", ".lock"):
        out = tmp_path / f"run-{name}"
        out.mkdir()
        os.link(node, out / name)
        line = error_line(capsys, ["train", "--data", data, "--epochs", "1", "--out", str(out), *small_argv()])
        assert f"{name} exists and is" in line
        assert is_kind(os.lstat(out / name).st_mode)
    os.link(node, tmp_path / "report.md")
    with pytest.raises(UserError, match="report.md exists and is"):
        experiments.write_report(str(tmp_path), "title", ["text"], {})
    assert "already exists" in error_line(capsys, ["prepare", data, node])
    # whatever they were asked, the special files are still there, as they were
    assert is_kind(os.lstat(node).st_mode) and is_kind(os.lstat(tmp_path / "s" / "0.saliency.png").st_mode)


def test_a_symbolic_link_is_written_through_to_its_target(run, tmp_path, capsys):
    run_dir, ckpt_path, data, image = run
    arrays, meta = ckpt.load(ckpt_path)
    target = tmp_path / "kept" / "model.npz"
    target.parent.mkdir()
    target.write_bytes(b"an older model")
    link = tmp_path / "latest.npz"
    link.symlink_to(target)
    ckpt.save(str(link), arrays, meta)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert ckpt.load(str(target))[1]["step"] == meta["step"]
    assert not [n for n in os.listdir(target.parent) if n.endswith(".tmp")]
    # a link that leads nowhere yet: the file it names is made
    dangling = tmp_path / "new.png"
    dangling.symlink_to(tmp_path / "kept" / "made.png")
    assert main(["neighbors", "--checkpoint", ckpt_path, "--data", data, image, "--out", str(dangling)]) == 0
    assert dangling.is_symlink() and (tmp_path / "kept" / "made.png").read_bytes().startswith(b"\x89PNG")
    # links in a loop: one line
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    capsys.readouterr()
    assert "Too many levels of symbolic links" in error_line(
        capsys, ["neighbors", "--checkpoint", ckpt_path, "--data", data, image, "--out", str(tmp_path / "loop1")])


def test_an_output_that_is_one_of_the_inputs_is_refused(run, tmp_path, capsys, monkeypatch):
    run_dir, ckpt_path, data, image = run
    original = open(ckpt_path, "rb").read()
    mine = tmp_path / "model.npz"
    mine.write_bytes(original)
    os.link(mine, tmp_path / "hard.npz")
    (tmp_path / "soft.npz").symlink_to(mine)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    cases = [(["import", str(mine), "--out", str(mine)], "model.npz is also an input of this command:"),
             (["import", str(mine), "--out", str(tmp_path / "hard.npz")], "hard.npz is also an input of this command ("),
             (["import", str(mine), "--classes", str(names), "--out", str(names)], "names.txt is also an input"),
             (["neighbors", "--checkpoint", str(mine), "--data", data, image, "--out", str(tmp_path / "soft.npz")],
              "soft.npz is also an input"),
             # x.png's picture would be x.saliency.png, the second image
             (["saliency", "--checkpoint", str(mine), str(tmp_path / "x.png"), str(tmp_path / "x.saliency.png"),
               "--out", str(tmp_path)], "x.saliency.png is also an input")]
    for name in ("x.png", "x.saliency.png"):
        (tmp_path / name).write_bytes(open(image, "rb").read())
    if HAVE_ONNX:
        cases += [(["export", "--onnx", str(mine), "--checkpoint", str(mine)], "model.npz is also an input"),
                  (["export", "--onnx", str(tmp_path / "soft.npz"), "--checkpoint", str(tmp_path / "hard.npz")],
                   "soft.npz is also an input")]
    for argv, message in cases:
        assert message in error_line(capsys, argv), argv
    # import's default output is FILE's name as .npz in the current folder: FILE itself, here
    monkeypatch.chdir(tmp_path)
    assert "model.npz is also an input" in error_line(capsys, ["import", "model.npz"])
    assert mine.read_bytes() == original and names.read_text() == "a\nb\nc\n"
    assert (tmp_path / "x.saliency.png").read_bytes() == open(image, "rb").read()


def test_the_rule_in_one_place(tmp_path):
    """check_output: what it returns to write, what it refuses; same_file by inode."""
    plain = tmp_path / "plain"
    assert files.check_output(str(plain)) == str(plain)          # nothing there yet
    plain.write_text("x")
    assert files.check_output(str(plain)) == str(plain)
    (tmp_path / "link").symlink_to(plain)
    assert files.check_output(str(tmp_path / "link")) == str(plain)
    with pytest.raises(UserError, match="is a folder, not a regular file"):
        files.check_output(str(tmp_path))
    assert files.same_file(str(tmp_path / "link"), str(plain)) and not files.same_file(str(plain), str(tmp_path / "no"))
    with pytest.raises(UserError, match="is also an input"):
        files.check_output(str(plain), [None, str(tmp_path / "link")])
    data = np.arange(3)
    files.atomic_write(str(tmp_path / "link"), lambda f: np.save(f, data))
    np.testing.assert_array_equal(np.load(plain), data)


def _no_work(*args, **kwargs):
    raise AssertionError("the command did its work before its outputs were checked")


def test_an_output_whose_folder_is_missing_is_refused_before_the_work(run, tmp_path, capsys, monkeypatch):
    """A file named by the user (import --out, export --onnx, neighbors --out) in a folder that does
    not exist, under a regular file, or through a link into a missing folder: one line that names
    the folder, before the weights or the training set are read; no folder is made for it."""
    from alexnet.app import checkpoint, import_cli
    run_dir, ckpt_path, data, image = run
    monkeypatch.setattr(import_cli, "import_weights", _no_work)
    monkeypatch.setattr(checkpoint, "load_model", _no_work)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "badlink.onnx").symlink_to("/nonexistent-alexnet/dir/x.onnx")
    nodir = str(tmp_path / "nodir")
    for out, said in ((f"{nodir}/x.out", f"cannot write {nodir}/x.out: the folder {nodir} does not exist"),
                      (f"{tmp_path}/file.txt/x.out", f"cannot write {tmp_path}/file.txt/x.out: {tmp_path}/file.txt "
                                                     f"is not a folder"),
                      (str(tmp_path / "badlink.onnx"), "badlink.onnx: it leads to /nonexistent-alexnet/dir/x.onnx, "
                                                       "whose folder /nonexistent-alexnet/dir does not exist")):
        commands = [["import", ckpt_path, "--out", out],
                    ["neighbors", "--checkpoint", ckpt_path, "--data", data, image, "--out", out]]
        if HAVE_ONNX:
            commands.append(["export", "--onnx", out, "--checkpoint", ckpt_path])
        for argv in commands:
            assert said in error_line(capsys, argv), argv
    assert not os.path.exists(nodir) and not os.path.exists("/nonexistent-alexnet")


def test_the_folder_of_an_output(tmp_path):
    """check_output's folder rule: a file output's folder must exist; a command that makes its
    output folder (plot's plots/, saliency --out) may name one that does not, if it can be made."""
    missing = str(tmp_path / "new" / "deeper" / "x.png")
    with pytest.raises(UserError, match=f"cannot write {missing}: the folder {tmp_path}/new/deeper does not exist"):
        files.check_output(missing, folder_must_exist=True)
    assert files.check_output(missing) == missing
    with pytest.raises(UserError, match="the folder .*/new/deeper does not exist"):
        files.atomic_write(missing, lambda f: f.write(b"x"))            # atomic_write never makes one
    assert not os.path.exists(tmp_path / "new")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match=f"{tmp_path}/f is not a folder"):
        files.check_output(str(tmp_path / "f" / "sub" / "x.png"))
    if os.geteuid() != 0:                                                  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(UserError, match=f"the folder {ro} is not writable"):
            files.check_output(str(ro / "x.png"))


def test_nothing_is_written_inside_a_dataset_the_command_reads(run, tmp_path, capsys, monkeypatch):
    """experiment --out and prepare's destination inside the dataset they read are refused (a
    folder there would be read as a class next time), and experiment checks its report, results
    and figure before the trainings."""
    data = str(tmp_path / "data")
    shutil.copytree(run[2], data)                 # a copy: a failing test must not spoil the others' data
    monkeypatch.setitem(experiments.EXPERIMENTS, "relu-vs-tanh", _no_work)
    for argv, said in ((["experiment", "relu-vs-tanh", "--data", data, "--out", os.path.join(data, "train", "e")],
                        f"{data}/train/e is inside the train/ folder of the dataset {data}"),
                       (["experiment", "relu-vs-tanh", "--data", data, "--out", data],
                        f"{data} is the dataset folder {data}"),
                       (["prepare", data, os.path.join(data, "train", "p")], f"{data}/train/p is inside the train/ "
                                                                                f"folder of the dataset {data}"),
                       (["train", "--data", data, "--out", os.path.join(data, "val", "b", "x"), *small_argv()],
                        f"{data}/val/b/x is inside the class folder val/b of the dataset {data}")):
        assert said in error_line(capsys, argv), argv
    assert sorted(os.listdir(data)) == ["train", "val"] and sorted(os.listdir(os.path.join(data, "train"))) == [
        "a", "b", "c"]
    # beside the splits nothing is read: a run directory there is fine (`cd data; alexnet train --data .`)
    monkeypatch.chdir(data)
    assert main(["train", "--data", ".", "--epochs", "1", "--stop-after-steps", "1", "--out", "runs/r",
                 *small_argv(workers=0)]) == 0
    assert sorted(os.listdir(os.path.join(data, "train"))) == ["a", "b", "c"]
    exp = tmp_path / "exp"
    exp.mkdir()
    os.mkfifo(exp / "relu_vs_tanh.png")
    assert "relu_vs_tanh.png exists and is a FIFO" in error_line(
        capsys, ["experiment", "relu-vs-tanh", "--data", data, "--out", str(exp)])
