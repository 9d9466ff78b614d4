"""`make run` and `make demo-api` can be started at the same moment, as the quick start's two
terminals invite: the second waits for the first's install instead of failing with
`.venv/bin/pip: No such file or directory`."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
import time

from tests.conftest import ROOT

# A python3 whose `-m venv` is slow between writing bin/python and bin/pip, like the real one
# (ensurepip takes seconds); bin/pip records every install it is asked for.
FAKE_PYTHON = textwrap.dedent("""\
    #!/bin/sh
    if [ "$1" = "-m" ] && [ "$2" = venv ]; then
        mkdir -p "$3/bin"
        ln -s /bin/true "$3/bin/python"
        sleep 1
        printf '#!/bin/sh\\necho "$*" >> "%s/pip.log"\\nsleep 0.5\\n' "$3" > "$3/bin/pip"
        chmod +x "$3/bin/pip"
        exit 0
    fi
    exit 0
    """)


def test_two_makes_that_install_at_once_both_succeed_and_install_once(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    python = tmp_path / "fake-python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    args = ["make", "--no-print-directory", "install", f"PYTHON={python}"]
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(0.3)  # the second terminal: the first has begun making the venv
    second = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    outputs = [process.communicate(timeout=60)[0].decode() for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    installs = (tmp_path / ".venv" / "pip.log").read_text().splitlines()
    assert installs == ["install -q --upgrade pip", "install -q -e ."]
