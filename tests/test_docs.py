"""Every ```python block in docs/*.md runs (the documentation's examples stay true)."""
import re
from pathlib import Path

import pytest

DOCS = sorted((Path(__file__).resolve().parents[1] / "docs").glob("*.md"))
BLOCKS = [(p.name, i, code) for p in DOCS
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), flags=re.S))
          if "# doc: no-run" not in code]


@pytest.mark.parametrize("name,i,code", BLOCKS, ids=[f"{n}-{i}" for n, i, _ in BLOCKS])
def test_doc_example_runs(name, i, code, tmp_path, monkeypatch, capsys):
    # An example for an optional extra says so with "# doc: requires <module>"; it runs where the extra is installed.
    for module in re.findall(r"# doc: requires (\S+)", code):
        pytest.importorskip(module, reason=f"{name} example {i} needs the optional module {module!r}")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{name}[{i}]", "exec"), {"__name__": "__doc_example__"})
    out = capsys.readouterr().out
    assert "False" not in out.split(), f"{name} example {i} printed a failed check:\n{out}"
