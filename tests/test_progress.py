"""The core names its slow steps to whoever asked; the CLI shows them on a terminal's stderr only."""

import plugsurgeon as ps
from plugsurgeon import progress
from tests.nets import TinyResNet, UntraceableNet


def test_apply_and_deploy_name_their_steps_to_the_callback_only_while_asked():
    seen = []
    with progress.reporting(seen.append):
        result = ps.apply(UntraceableNet(), "se", input_shape=(1, 3, 32, 32))
        ps.deploy(result.model, input_shape=(1, 3, 32, 32))
    steps = " | ".join(seen)
    for expected in ("tracing UntraceableNet", "running UntraceableNet once", "planning step 1 of 'se'",
                     "building 4 edits", "deploying", "verifying"):
        assert expected in steps, steps
    seen.clear()
    ps.apply(TinyResNet(), "se", input_shape=(1, 3, 32, 32))  # outside the block: nobody is told
    assert seen == []


def test_cli_progress_never_reaches_a_pipe():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from plugsurgeon.cli.app import main; main()", "sites", "resnet18", "--kind", "backbone"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and "layer4.1.relu" in done.stdout
