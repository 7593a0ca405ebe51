"""Outputs: every command refuses an unwritable --out before any work, and a write that fails
after the work saves the result to a fallback path the error names; no OSError traceback."""

import pytest
from conftest import VALIDATION_DIR
from typer.testing import CliRunner

from archscale.arch.errors import ArchscaleError
from archscale.cli.main import app
from archscale.laws import load_law

EPOCH_CSV = VALIDATION_DIR / "chinchilla_epoch.csv"
EPOCH_COLUMNS = "N=Model Size,flops=Training FLOP,loss=loss"

# Inputs that do not exist: a command that got as far as reading them would fail differently.
COMMANDS = {
    "train": ["train", "tiny", "--tokens", "1e4", "--corpus", "missing/", "--out", "{out}/r.json"],
    "train checkpoints": ["train", "tiny", "--tokens", "1e4", "--checkpoint-dir", "{out}/ckpt"],
    "fit": ["fit", "--law", "chinchilla", "--csv", "missing.csv", "--out", "{out}/law.json"],
    "fit plots": ["fit", "--law", "chinchilla", "--csv", "missing.csv", "--out", "law.json",
                  "--plot", "{out}/plots"],
    "predict": ["predict", "missing.json", "--csv", "missing.csv", "--out", "{out}/p.csv"],
    "recommend": ["recommend", "--law", "missing.json", "--params", "1e9", "--tokens", "2e10",
                  "--out", "{out}/rec"],
    "export": ["export", "missing/", "--out", "{out}/hf"],
    "study export": ["study", "export", "missing", "--csv", "{out}/runs.csv",
                     "--storage", "missing.journal"],
    "demo": ["demo", "--out", "{out}/report", "--storage", "missing.journal"],
    "study run": ["study", "run", "missing", "--artifacts", "{out}/art", "--storage", "m.journal"],
    "study worker": ["study", "worker", "missing", "--artifacts", "{out}/art"],
    "arch export": ["arch", "export", "tiny", "--format", "hf", "--out", "{out}/cfg"],
    "arch export-hf": ["arch", "export-hf", "tiny", "--out", "{out}/cfg"],
    "substitute": ["substitute", "--loss-law", "missing.json", "--passk-law", "missing.json",
                   "--params", "1e8", "--target-pass", "0.5", "--requests", "1e9",
                   "--out", "{out}/sub"],
    "bench throughput": ["bench", "throughput", "tiny", "--out", "{out}/tp.json"],
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_unwritable_output_is_refused_before_any_work(tmp_path, name):
    blocker = tmp_path / "a-file"  # a file where the output's folder should be
    blocker.write_text("")
    args = [a.format(out=blocker) for a in COMMANDS[name]]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ArchscaleError), (result.output, result.exception)
    message = str(result.exception)
    assert "cannot be created" in message and f"{blocker} is a file" in message
    assert "\n" not in message


def test_a_failed_write_after_fitting_saves_the_law_elsewhere(tmp_path, monkeypatch):
    import archscale.laws

    out = tmp_path / "law.json"
    real_save = archscale.laws.save_law

    def disk_full_at_out(law, path):
        if path == out:
            raise OSError(28, "No space left on device", str(path))
        return real_save(law, path)

    monkeypatch.setattr(archscale.laws, "save_law", disk_full_at_out)
    monkeypatch.setenv("ARCHSCALE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["fit", "--law", "chinchilla", "--csv", str(EPOCH_CSV),
                                      "--columns", EPOCH_COLUMNS, "--out", str(out),
                                      "--n-boot", "0", "--no-progressive"])
    assert isinstance(result.exception, ArchscaleError), result.output
    message = str(result.exception)
    assert message.startswith(f"could not write the fitted law to {out} (No space left on "
                              "device): it is saved at ")
    saved = message.rsplit("saved at ", 1)[1].removesuffix(" instead")
    assert load_law(saved).kind == "chinchilla" and not out.exists()


def test_an_os_error_is_one_line(tmp_path):
    folder = tmp_path / "law.json"
    folder.mkdir()  # reading a folder as a law file raises IsADirectoryError
    result = CliRunner().invoke(app, ["predict", str(folder), "--compute", "1e21"])
    assert isinstance(result.exception, ArchscaleError), result.output
    assert str(folder) in str(result.exception) and "\n" not in str(result.exception)
