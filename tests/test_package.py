"""The project is an installable package: `pip install .` gives a working `import ib_jax` elsewhere."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pip_install_gives_the_library_outside_the_repository(tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "notebook"
    elsewhere.mkdir()
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), REPO],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # A user's script in another directory: only the installed copy is on the path (no cwd repo).
    script = (
        "import os, ib_jax, data_pipelines.demo_data as demo, data_pipelines.formats as formats\n"
        "from ib_jax.contract.model import ModelConfig\n"
        "print(ib_jax.__file__)\n"
        "assert os.path.exists(demo.DEMO_SPM) and os.path.exists(demo.DEMO_VOCAB)\n"
        "assert 'vqav2' in formats.PARSERS\n"
        "assert callable(ib_jax.load_pretrained)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith(str(target)), done.stdout
