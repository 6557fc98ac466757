"""launch/tpu_pod.py against a fake `gcloud` (tests/fake_tools/fakes.py) that records every call,
plays back slice states and runs the worker scripts in per-worker home directories."""

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from launch import tpu_commands
from tests.fake_tools import fakes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--name=ib-test",
    "--zone=us-east5-a",
    "--project=proj",
    "--accelerator=v5e-16",
    "--config=configs/tiny.py",
    "--workdir=gs://bucket/runs/tiny",
    "--poll_s=0",
]


def _launch(tmp_path, *flags, scenario=None, check=True):
    """Run the launcher with the fakes first on PATH; (its output, the recorded calls)."""
    bin_dir, state = str(tmp_path / "bin"), str(tmp_path / "state")
    if scenario is not None:
        fakes.install(bin_dir, state, scenario)
    # TMPDIR: the launcher's `git archive` goes there.
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "launch.tpu_pod", *FLAGS, *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, fakes.calls(state)


def _gcloud_verbs(calls):
    """The launcher's own gcloud calls (not the workers'), as 'queued-resources create', ..."""
    verbs = []
    for call in calls:
        if call["tool"] != "gcloud" or call["worker"] is not None:
            continue
        words = [a for a in call["argv"] if not a.startswith("-") and a != "alpha"]
        verbs.append(" ".join(words[2:4]) if words[0] == "compute" else " ".join(words[:2]))
    return verbs


def _documented_commands():
    """launch/README.md's list: [(verb words, required flags, optional flags)]."""
    with open(os.path.join(REPO, "launch", "README.md")) as f:
        text = f.read()
    block = text.split("<!-- tpu_pod commands -->\n```text\n", 1)[1].split("```", 1)[0]
    documented = []
    for line in block.strip().splitlines():
        tokens = line.split()
        verb = [t for t in tokens[1:] if re.fullmatch(r"[a-z][a-z-]*", t)]
        required = {t.split("=")[0] for t in tokens if t.startswith("--")}
        optional = {t.strip("[]").split("=")[0] for t in tokens if t.startswith("[--")}
        documented.append((verb, required, optional))
    return documented


def _check_documented(calls):
    documented = _documented_commands()
    for call in calls:
        if call["tool"] != "gcloud":
            continue
        argv = [a for a in call["argv"] if a != "alpha"]
        flags = {a.split("=")[0] for a in argv if a.startswith("--")}
        matches = [
            (required, optional)
            for verb, required, optional in documented
            if argv[: len(verb)] == verb
        ]
        assert matches, f"undocumented gcloud call: {argv}"
        required, optional = matches[0]
        assert required <= flags <= required | optional, (argv, required, optional)


def test_dry_run_prints_a_fresh_slices_sequence():
    done = subprocess.run(
        [sys.executable, "-m", "launch.tpu_pod", *FLAGS, "--spot", "--watch", "--dry_run", "--",
         "--config.train.num_steps=10"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]
    create = next(c for c in commands if c[3:5] == ["queued-resources", "create"])
    assert "--accelerator-type=v5litepod-16" in create
    assert "--runtime-version=v2-alpha-tpuv5-lite" in create and "--spot" in create
    start = next(c for c in commands if "setsid nohup" in c[-1])
    assert "ib_jax.train --config=configs/tiny.py --workdir=gs://bucket/runs/tiny" in start[-1]
    assert "--config.train.num_steps=10" in start[-1]
    assert commands[-1][3:5] == ["queued-resources", "delete"]
    _check_documented([{"tool": "gcloud", "argv": c[1:]} for c in commands if c[0] == "gcloud"])


@pytest.mark.parametrize(
    "accelerator, gcloud_type, runtime, per_host",
    [
        ("v4-32", "v4-32", "tpu-ubuntu2204-base", 4),
        ("v5litepod-8", "v5litepod-8", "v2-alpha-tpuv5-lite", 8),
        ("v5e-64", "v5litepod-64", "v2-alpha-tpuv5-lite", 4),
        ("v5p-128", "v5p-128", "v2-alpha-tpuv5", 4),
        ("v6e-256", "v6e-256", "v2-alpha-tpuv6e", 4),
    ],
)
def test_one_table_names_every_generation(accelerator, gcloud_type, runtime, per_host):
    pod = tpu_commands.Pod(
        name="n", zone="z", config="c", workdir="gs://b", accelerator=accelerator
    )
    create = tpu_commands.create_queued_resource(pod)
    assert f"--accelerator-type={gcloud_type}" in create
    assert f"--runtime-version={runtime}" in create
    assert tpu_commands.devices_per_host(accelerator) == per_host


def test_best_effort_goes_through_gcloud_alpha():
    pod = tpu_commands.Pod(name="n", zone="z", config="c", workdir="gs://b", best_effort=True)
    assert tpu_commands.create_queued_resource(pod)[:2] == ["gcloud", "alpha"]


def test_watch_survives_a_preemption_and_deletes_the_slice(tmp_path):
    scenario = {
        "workers": 2,
        # fresh request; waiting; active; running at the first poll, preempted at the second;
        # the relaunch's slice is active; the job has finished at the next poll.
        "qr": ["NOT_FOUND", "WAITING_FOR_RESOURCES", "ACTIVE", "ACTIVE", "ACTIVE", "ACTIVE",
               "ACTIVE", "ACTIVE"],
        "node": ["READY", "READY", "PREEMPTED", "PREEMPTED", "READY", "READY"],
        "running": ["no", "no", "yes", "yes", "no"],  # not yet running; running; exited
        "done": ["present"],
    }  # fmt: skip
    done, calls = _launch(tmp_path, "--spot", "--watch", scenario=scenario)
    assert _gcloud_verbs(calls) == [
        "queued-resources describe", "queued-resources create",  # no slice: request one
        "queued-resources describe",  # WAITING_FOR_RESOURCES
        "queued-resources describe", "tpu-vm describe",  # ACTIVE, READY
        "tpu-vm ssh",  # is a job running already? (no)
        "tpu-vm scp", "tpu-vm ssh",  # code
        "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh",  # install, stop, preflight, start
        "queued-resources describe", "tpu-vm describe", "tpu-vm ssh",  # poll: running
        "queued-resources describe", "tpu-vm describe",  # poll: PREEMPTED
        "queued-resources describe", "tpu-vm describe",  # still PREEMPTED: recreate
        "queued-resources delete", "queued-resources create",
        "queued-resources describe", "tpu-vm describe",  # ACTIVE, READY
        "tpu-vm scp", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh", "tpu-vm ssh",
        "queued-resources describe", "tpu-vm describe", "tpu-vm ssh",  # poll: exited
        "storage ls",  # TRAINING_DONE is there
        "tpu-vm ssh", "queued-resources delete",  # collect the logs, delete the slice
    ]  # fmt: skip
    _check_documented(calls)
    assert "job preempted" in done.stdout and "job done" in done.stdout
    by_worker = [c for c in calls if c["worker"] == "0"]
    # The new slice has new disks: uv, the venv and the packages are installed again, once each.
    assert sum(c["tool"] == "uv" and c["argv"][:1] == ["venv"] for c in by_worker) == 2
    jobs = [c["argv"] for c in by_worker if c["tool"] == "job-python"]
    assert [a[:2] for a in jobs] == [["-m", "launch.tpu_preflight"], ["-m", "ib_jax.train"]] * 2
    assert "--devices_per_host=4" in jobs[0]
    assert all(
        c["tool"] != "sudo" or c["argv"][0] in ("pkill", "lsof", "kill", "rm") for c in calls
    )
    # Each worker's logs go to the workdir: at the end of each job and once more at the end.
    uploads = [
        c["argv"] for c in calls if c["tool"] == "gcloud" and c["argv"][:2] == ["storage", "cp"]
    ]
    assert uploads and all("gs://bucket/runs/tiny/launch_logs/" in a[-1] for a in uploads)


def test_a_rerun_reuses_the_slice_and_venv_and_frees_a_busy_tpu(tmp_path):
    state = tmp_path / "state"
    # Worker 0 has a venv from an earlier, interrupted install (no stamp): `uv venv` must not run.
    old_venv = state / "workers" / "0" / "ib_jax_venv" / "bin"
    old_venv.mkdir(parents=True)
    (old_venv / "python").write_text("#!/bin/sh\n")
    (old_venv / "python").chmod(0o755)
    first, calls = _launch(tmp_path, scenario={"qr": ["NOT_FOUND", "ACTIVE"]})
    assert "started, detached" in first.stdout
    assert not any(
        c["tool"] == "uv" and c["argv"][0] == "venv" and c["worker"] == "0" for c in calls
    )
    assert any(c["tool"] == "uv" and c["argv"][0] == "venv" and c["worker"] == "1" for c in calls)
    assert sum(c["tool"] == "uv" and c["argv"][:2] == ["pip", "install"] for c in calls) == 2
    assert _gcloud_verbs(calls)[
        -1
    ] == "tpu-vm ssh" and "queued-resources delete" not in _gcloud_verbs(calls)

    # The rerun: the slice is ACTIVE, a stale process holds the TPU, the venv is built.
    stale = subprocess.Popen(["sleep", "600"])
    try:
        fakes.install(
            str(tmp_path / "bin"), str(state), {"qr": ["ACTIVE"], "busy_pids": [stale.pid]}
        )
        before = len(calls)
        _, calls = _launch(tmp_path)
        rerun = calls[before:]
        assert stale.wait(timeout=30) == -signal.SIGKILL
    finally:
        if stale.poll() is None:
            stale.kill()
    assert "queued-resources create" not in _gcloud_verbs(rerun)
    assert not any(c["tool"] == "uv" and c["argv"][0] in ("venv", "pip", "python") for c in rerun)
    sudo = [c["argv"] for c in rerun if c["tool"] == "sudo"]
    assert ["rm", "-f", "/tmp/libtpu_lockfile"] in sudo and ["kill", "-9", str(stale.pid)] in sudo
    # Code is copied again even though nothing is installed.
    assert "tpu-vm scp" in _gcloud_verbs(rerun)
    _check_documented(rerun)


def test_a_failed_request_is_made_again_and_a_failed_preflight_stops(tmp_path):
    scenario = {"qr": ["FAILED", "ACTIVE"], "workers": 1}
    bin_dir, state = str(tmp_path / "bin"), str(tmp_path / "state")
    fakes.install(bin_dir, state, scenario)
    # The job's interpreter exits 3 (as launch/tpu_preflight.py does on a problem).
    venv = os.path.join(state, "workers", "0", "ib_jax_venv", "bin", "python")
    done, calls = _launch(tmp_path, check=False)
    assert _gcloud_verbs(calls)[:4] == [
        "queued-resources describe", "queued-resources delete", "queued-resources create",
        "queued-resources describe",
    ]  # fmt: skip
    assert done.returncode == 0 and os.path.exists(venv)
    with open(venv, "w") as f:
        f.write(
            "#!/bin/sh\necho 'preflight w0: devices: this host sees 0, the slice has 4'\nexit 3\n"
        )
    done, calls = _launch(tmp_path, check=False)
    assert done.returncode == 1 and "preflight failed" in done.stderr
    assert "this host sees 0" in done.stdout
    assert not any("setsid" in " ".join(c["argv"]) for c in calls[-3:])


def test_refuses_a_local_workdir_and_two_tiers():
    for flags in (["--workdir=/tmp/run"], ["--spot", "--reserved"]):
        done = subprocess.run(
            [sys.executable, "-m", "launch.tpu_pod", *FLAGS, *flags, "--dry_run"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr


def test_preflight_names_each_problem_in_one_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2")
    env.pop("IB_JAX_DISTRIBUTED", None)

    def preflight(*flags):
        return subprocess.run(
            [sys.executable, "-m", "launch.tpu_preflight", *flags],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    ok = preflight(f"--workdir={tmp_path / 'run'}", "--devices_per_host=2", "--min_disk_gb=0")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "ok (process 0 of 1: 2 local / 2 devices" in ok.stdout
    assert not list((tmp_path / "run" / "launch_logs").iterdir())  # the probe file is removed
    (tmp_path / "a_file").write_text("")
    bad = preflight(f"--workdir={tmp_path / 'a_file' / 'run'}", "--devices_per_host=4",
                    "--min_disk_gb=1e9")  # fmt: skip
    assert bad.returncode == 3, bad.stderr[-2000:]
    lines = bad.stdout.splitlines()
    assert len(lines) == 3, lines
    assert "devices: this host sees 2, the slice has 4 per host" in lines[0]
    assert "cannot write and read back a file" in lines[1]
    assert "need --min_disk_gb=1e+09" in lines[2]


def test_watch_attaches_to_a_running_job_instead_of_restarting_it(tmp_path):
    scenario = {"qr": ["ACTIVE"], "running": ["yes", "yes", "no"], "done": ["present"]}
    done, calls = _launch(tmp_path, "--watch", "--keep", scenario=scenario)
    assert "already running on the slice: watching it" in done.stdout
    assert _gcloud_verbs(calls) == [
        "queued-resources describe", "tpu-vm describe", "tpu-vm ssh",  # ACTIVE; running
        "queued-resources describe", "tpu-vm describe", "tpu-vm ssh",  # poll: exited
        "storage ls", "tpu-vm ssh",  # done: collect the logs; --keep: no delete
    ]  # fmt: skip
    assert not any(c["tool"] == "sudo" for c in calls)  # nothing was stopped


def test_an_attached_run_deletes_the_slice_only_when_the_job_succeeded(tmp_path):
    scenario = {"qr": ["NOT_FOUND", "ACTIVE"], "workers": 1, "job_exit": [0]}
    done, calls = _launch(tmp_path, "--nodetach", scenario=scenario)
    assert _gcloud_verbs(calls)[-2:] == ["tpu-vm ssh", "queued-resources delete"]
    scenario = {"qr": ["NOT_FOUND", "ACTIVE"], "workers": 1, "job_exit": [7]}
    done, calls = _launch(tmp_path / "failed", "--nodetach", scenario=scenario, check=False)
    assert done.returncode == 7 and "job failed (exit status 7): slice kept" in done.stdout
    assert "queued-resources delete" not in _gcloud_verbs(calls)
    start = next(c for c in calls if c["tool"] == "gcloud" and "tee -a" in c["argv"][-1])
    assert "setsid" not in start["argv"][-1]
