"""docs/configs.md and the README stay true: every task option is documented, every documented command line passes
the checks that run before any work, and the YAML example is a valid config."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from invsolve.cli import main
from invsolve.reconstruct import load_config, preflight
from invsolve.tasks import available_tasks, get_task
from invsolve.train import load_recipe
from invsolve.train_output import check_recipe

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "configs.md").read_text()
README = (ROOT / "README.md").read_text()


def _commands(text: str, command: str):
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(f"invsolve {command}"):
                out.append(shlex.split(line)[2:])
    return out


@pytest.mark.parametrize("task", sorted(available_tasks()))
def test_every_task_option_is_documented(task):
    section = DOC.split(f"#### `task: {task}`")[1].split("####")[0]
    for key in get_task(task).defaults:
        assert f"| `{key}` |" in section, f"docs/configs.md does not document problem.{key} of task {task!r}"


RECONSTRUCT = _commands(DOC, "reconstruct") + _commands(README, "reconstruct")


@pytest.mark.parametrize("args", RECONSTRUCT, ids=[" ".join(a)[:60] for a in RECONSTRUCT])
def test_documented_reconstruct_commands_pass_the_checks(args, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    flags = [a for a in args if a.startswith("--")]
    config, overrides = [a for a in args if not a.startswith("--")][0], [a for a in args[1:] if not a.startswith("-")]
    cfg = load_config(config, overrides + [f"output.dir={tmp_path / 'o'}"])
    assert not flags or flags == ["--overwrite"]
    preflight(cfg)


def test_the_yaml_example_is_a_valid_config(tmp_path):
    example = re.search(r"```yaml\n(problem:.*?)```", DOC, flags=re.S).group(1)
    (tmp_path / "c.yaml").write_text(example)
    assert yaml.safe_load(example)["problem"]["task"] == "deblur"
    preflight(load_config(tmp_path / "c.yaml"))


TRAIN = [a for a in _commands(DOC, "train-prior") + _commands(README, "train-prior") if "--export-embedded" not in a]


@pytest.mark.parametrize("args", TRAIN, ids=[" ".join(a)[:60] for a in TRAIN])
def test_documented_train_commands_pass_the_checks(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_recipe(load_recipe(args[0], args[1:]))


@pytest.mark.parametrize("args", _commands(DOC, "list"))
def test_documented_list_commands_run(args, capsys):
    assert main(["list", *args]) == 0
    assert "default" in capsys.readouterr().out
