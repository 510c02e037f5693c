"""CLI usage: one-line usage errors, global flags anywhere, --version, python -m autodim,
init, --data-opt, OS errors and Ctrl-C."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
import yaml

from autodim.cli import main


def _one_line(err: str) -> str:
    err = err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, words, hint", [
    (["train", "--epoch", "1"], ["No such option: --epoch", "--epochs"], "autodim train --help"),
    (["inspect"], ["Missing argument"], "autodim inspect --help"),
    (["nope"], ["No such command 'nope'"], "autodim --help"),
    (["train", "--epochs", "abc"], ["'--epochs'", "integer"], "autodim train --help"),
    (["data", "info"], ["Missing argument"], "autodim data info --help"),
    (["search", "--n-trials"], ["requires an argument"], "autodim search --help"),
])
def test_usage_errors_are_one_line_with_the_help_hint(argv, words, hint, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = _one_line(captured.err)
    assert all(w in err for w in words), err
    assert err.endswith(f"see '{hint}'"), err
    assert captured.out == ""


def test_bare_autodim_shows_the_commands_and_exits_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "train" in out and "search" in out and "Usage" in out


def test_version_everywhere(capsys):
    import autodim

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"autodim {autodim.__version__}"
    proc = subprocess.run([sys.executable, "-m", "autodim", "--version"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"autodim {autodim.__version__}"


def test_python_dash_m_autodim_maps_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "autodim", "train", "--epochs", "abc"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_line(proc.stderr)


def test_quiet_and_debug_after_the_command(capsys):
    argv = ["train", "--data", "synthetic:tiny", "--epochs", "1", "--dim", "8", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training fm" not in out  # -q after the command silences the chatter
    assert "epochs 1/1" in out  # and train says how many epochs ran
    with pytest.raises(Exception) as info:  # --debug after the command: the traceback
        main(["train", "--data", "/no/such/folder", "--debug"])
    assert "/no/such/folder" in str(info.value)


@pytest.mark.parametrize("exc, words", [
    (OSError(errno.ENOSPC, "No space left on device", "/full/disk/x.npy"),
     "No space left on device: /full/disk/x.npy"),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"),
     "unexpected end of input"),
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (MemoryError(), "out of memory"),
])
def test_system_errors_are_one_line_and_exit_2(exc, words, monkeypatch, capsys):
    import autodim.cli as cli

    def boom(*_a, **_k):
        raise exc

    monkeypatch.setattr(cli, "_print_schema", boom)
    assert main(["data", "info", "synthetic:tiny"]) == 2
    assert words in _one_line(capsys.readouterr().err)
    with pytest.raises(type(exc)):
        main(["data", "info", "synthetic:tiny", "--debug"])


def test_ctrl_c_during_training_exits_130(monkeypatch, capsys):
    """Lightning catches KeyboardInterrupt inside fit and calls sys.exit(1); the command
    must still say `interrupted` and exit 130."""
    import signal

    from autodim.task import CTRTask

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(CTRTask, "on_train_epoch_end", interrupt, raising=False)
    before = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["-q", "train", "--data", "synthetic:tiny", "--epochs", "3", "--dim", "8"])
        assert rc == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # Ctrl-C works again
    finally:
        signal.signal(signal.SIGINT, before)


def test_init_writes_a_starter_study_that_loads(tmp_path, capsys):
    from autodim.study.config import StudyConfig

    folder = tmp_path / "mine"
    assert main(["init", str(folder)]) == 0
    assert "autodim search" in capsys.readouterr().out
    cfg = StudyConfig.load(folder / "study.yaml")
    assert cfg.search_space.methods and cfg.n_trials >= 1 and cfg.budgets
    raw = yaml.safe_load((folder / "study.yaml").read_text())
    assert raw["search_space"] == "search_space.yaml"
    # a second init refuses to overwrite, --force does
    assert main(["init", str(folder)]) == 2
    assert "already there" in _one_line(capsys.readouterr().err)
    (folder / "study.yaml").write_text("name: changed\n")
    assert main(["init", str(folder), "--force"]) == 0
    assert "starter" in (folder / "study.yaml").read_text()


def test_data_opt_reaches_the_loader(capsys):
    assert main(["data", "info", "synthetic:tiny", "--data-opt", "rows=2000"]) == 0
    out = capsys.readouterr().out
    assert "train 1,600" in out  # 80% of 2000 rows
    assert main(["data", "info", "synthetic:tiny", "--data-opt", "rows=2000",
                 "--data-opt", "seed=7"]) == 0
    seven = capsys.readouterr().out.split("fingerprint")[0]
    assert main(["data", "info", "synthetic:tiny", "--data-opt", "rows=2000"]) == 0
    zero = capsys.readouterr().out.split("fingerprint")[0]
    assert seven != zero  # another seed, other data


def test_data_opt_errors_in_the_cli_words(tmp_path, capsys):
    assert main(["data", "info", "synthetic:tiny", "--data-opt", "rows"]) == 2
    assert "--data-opt 'rows': expected KEY=VALUE" in _one_line(capsys.readouterr().err)
    assert main(["data", "info", "synthetic:tiny", "--rows", "100", "--data-opt",
                 "rows=200"]) == 2
    assert "disagree" in _one_line(capsys.readouterr().err)
    csv = tmp_path / "clicks.csv"
    csv.write_text("label,a\n1,x\n0,y\n")
    assert main(["data", "info", str(csv)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--spec" in err and "spec=" not in err
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"label": "label", "fields": {"a": {"kind": "categorical"}}}))
    assert main(["data", "info", str(csv), "--spec", str(spec), "--data-opt", "bogus=1"]) == 2
    assert "unknown --data-opt key 'bogus'" in _one_line(capsys.readouterr().err)


def test_train_threads(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["-q", "train", "--data", "synthetic:tiny", "--epochs", "1", "--dim", "8",
                     "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["train", "--threads", "0"]) == 2  # below the minimum: a usage error
        assert "--threads" in _one_line(capsys.readouterr().err)
    finally:
        torch.set_num_threads(before)


def test_ctrl_c_in_a_searchers_own_trainer_exits_130(monkeypatch, capsys, tiny_data):
    """Searchers call make_trainer(...).fit themselves: Lightning's sys.exit(1) after a
    Ctrl-C there is still `interrupted` and 130."""
    import signal

    import autodim.cli as cli
    from autodim.data.datamodule import CTRDataModule
    from autodim.plan import DimensionPlan
    from autodim.task import CTRTask, TrainConfig, make_trainer

    def interrupt(self):
        raise KeyboardInterrupt

    def searcher_like(_ds):
        plan = DimensionPlan.full(tiny_data.schema, 8)
        from autodim.models import create_backbone

        task = CTRTask(plan.build(), create_backbone("fm", tiny_data.schema.num_fields, 8))
        make_trainer(TrainConfig(max_epochs=2)).fit(
            task, datamodule=CTRDataModule(tiny_data, batch_size=512))

    import autodim.task

    monkeypatch.setitem(autodim.task._INTERRUPT, "seen", True)  # an old Ctrl-C ...
    make_trainer(TrainConfig())
    assert not autodim.task.interrupted_by_user()  # ... is forgotten by the next Trainer
    monkeypatch.setattr(CTRTask, "on_train_epoch_end", interrupt, raising=False)
    monkeypatch.setattr(cli, "_print_schema", searcher_like)
    before = signal.getsignal(signal.SIGINT)
    try:
        assert main(["data", "info", "synthetic:tiny"]) == 130
        assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"
    finally:
        signal.signal(signal.SIGINT, before)
