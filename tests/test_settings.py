"""The settings module: choice lists defined once, parameters in library messages, the CLI reading both."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from overlap_audit import settings
from overlap_audit.cli import main
from overlap_audit.errors import IndexDirError, ThresholdError, param


def test_named_choices_match_the_tables_that_define_each_one():
    from overlap_audit.augment import STRENGTHS
    from overlap_audit.detectors.clipdup_net import ARCHS

    assert settings.COPY_STRENGTHS == tuple(STRENGTHS)
    assert sorted(settings.DETECTOR_ARCHS) == sorted(ARCHS)


def test_the_cli_takes_its_choices_and_defaults_from_the_settings():
    params = {name: {p.name: p for p in cmd.params} for name, cmd in main.commands.items()}
    assert params["index"]["index_type"].type.choices == settings.INDEX_TYPES
    assert params["index"]["shard_size"].default == settings.IndexSettings.shard_size
    assert params["report"]["correction"].type.choices == settings.CORRECTIONS
    assert params["report"]["k"].default == settings.MatchSettings.k
    assert params["train-detector"]["input_mode"].type.choices == settings.INPUT_MODES
    assert params["pretrain-clip"]["caption_from"].type.choices == settings.CAPTION_RULES


def test_a_parameter_reads_as_python_in_the_library_and_as_a_flag_on_the_command_line():
    err = IndexDirError(f"{param('index_type', 'mih')} is for 64-bit hashes; pass {param('resume', True)} "
                        f"or another {param('out_dir')}")
    assert str(err) == "index_type='mih' is for 64-bit hashes; pass resume=True or another out_dir"
    assert err.render(lambda n: {"out_dir": "--out"}.get(n, "--" + n.replace("_", "-"))) == (
        "--index-type mih is for 64-bit hashes; pass --resume or another --out")
    with pytest.raises(ThresholdError, match=r"^target_precision must be in \(0, 1\]"):
        from overlap_audit.review import choose_threshold
        choose_threshold("a", [0.9], [True], target_precision=2.0)


def test_a_settings_check_names_the_parameter():
    with pytest.raises(settings.SettingsError, match="correction must be one of bonferroni, holm"):
        settings.StatsSettings(correction="sidak")
    r = CliRunner().invoke(main, ["report", ".", "--eval", "a=.", "--predictions", __file__, "--out", "x",
                                  "--correction", "sidak"])
    assert r.exit_code == 2 and "'sidak' is not one of 'bonferroni', 'holm'" in r.output


def test_the_command_line_module_stays_light():
    probe = ("import sys, overlap_audit.cli; "
             "print(sorted(m for m in ('numpy', 'PIL', 'faiss', 'torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_similarities_out_of_range_are_refused_where_they_are_parsed(tmp_path):
    """A threshold, a thresholds file's value and a first stage are similarities in [0, 1]: a value outside
    is refused with a one-line message, a percentage named as one."""
    import json

    import pytest

    from overlap_audit.decide.rule import VerifySettings
    from overlap_audit.decide.points import load_points
    from overlap_audit.errors import SettingsError, ThresholdError
    from overlap_audit.settings import StatsSettings

    with pytest.raises(SettingsError, match=r"threshold must be a similarity in \[0, 1\] \(got 85.9; a percentage\? 0.859\)"):
        StatsSettings(threshold=85.9)
    with pytest.raises(SettingsError, match="verify.first_stage"):
        VerifySettings(first_stage=5)
    with pytest.raises(SettingsError, match=r"got -0.1\)"):
        VerifySettings(threshold=-0.1)
    assert StatsSettings(threshold=0.9).threshold == 0.9 and VerifySettings(first_stage=0).first_stage == 0
    path = tmp_path / "t.json"
    for bad in (1.5, -1, "0.9"):
        path.write_text(json.dumps({"val": bad}))
        with pytest.raises(ThresholdError, match="the threshold of 'val'"):
            load_points(path).thresholds


def test_the_cli_names_the_flag_of_an_out_of_range_similarity(tmp_path):
    from click.testing import CliRunner

    from overlap_audit.cli import main

    (tmp_path / "idx").mkdir()
    (tmp_path / "e").mkdir()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "idx"), "--eval", f"v={tmp_path / 'e'}", "--predictions",
                                  __file__, "--out", str(tmp_path / "r"), "--threshold", "85.9"])
    assert r.exit_code == 2 and "--threshold must be a similarity" in r.output and "0.859" in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["report", str(tmp_path / "idx"), "--eval", f"v={tmp_path / 'e'}", "--predictions",
                                  __file__, "--out", str(tmp_path / "r"), "--verify-from", "5"])
    assert r.exit_code == 2 and "--verify-from must be a similarity" in r.output
