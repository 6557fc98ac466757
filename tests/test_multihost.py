"""Two real processes (jax.distributed on 127.0.0.1, 4 CPU devices each) against one process x 8 devices.

With P processes, process i contributes its block of `global_batch_size / P` rows of each global
batch of the one global data order (data_pipelines/global_order); the global batch is the
concatenation of the process-local batches in process order (the mesh lists process 0's devices
first). The single-process reference here builds both per-process pipelines and concatenates their
batches. Same global batches -> the losses must agree to float-reduction order.

The checkpoint the two processes write must restore in one process onto the 8-device mesh
(parameters, optimizer state and the data iterator, whose state is a global position: issue 24),
and continue with the 2-process run's losses and batches. A newest checkpoint
damaged afterwards is found unreadable by both processes, which agree to resume from the previous.
"""

import concurrent.futures
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines import demo_data, train_pipeline
from ib_jax import checkpoint, sharding
from ib_jax.configs_util import load_config
from ib_jax.train import trainer
from ib_jax.train.state import TrainState, merge_params, split_params
from launch import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS, SAVE_EVERY = 4, 2
OVERRIDES = [
    f"--config.train.num_steps={NUM_STEPS}",
    f"--config.checkpoint.every_steps={SAVE_EVERY}",
]


def _config(data_root):
    config = load_config(os.path.join(REPO, f"configs/tiny.py:root={data_root}"))
    config.unlock()
    config.train.num_steps, config.checkpoint.every_steps = NUM_STEPS, SAVE_EVERY
    return config


def _emulated_two_process_batches(config, num_batches):
    """Global batches of a 2-process run, built in one process: [process 0 rows; process 1 rows]."""
    iterators = [
        iter(train_pipeline.build_train_dataset(config.data, process_index=i, process_count=2))
        for i in range(2)
    ]
    return [
        {key: np.concatenate([local_batch[key] for local_batch in locals_]) for key in locals_[0]}
        for locals_ in ([next(it) for it in iterators] for _ in range(num_batches))
    ]


def _launch_two_processes(data_root, workdir):
    local.launch(
        [
            "-m",
            "ib_jax.train",
            f"--config={REPO}/configs/tiny.py:root={data_root}",
            f"--workdir={workdir}",
            *OVERRIDES,
        ],
        num_processes=2,
        devices_per_process=4,
        timeout_s=900,
        log_dir=os.path.join(workdir, "logs"),
    )
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row["loss"] for row in map(json.loads, f)}


@pytest.mark.slow  # several processes compile apart: minutes on 2 cores
def test_two_processes_match_one_process_checkpoint_restores_in_one_and_damage_falls_back(
    tmp_path,
):
    data_root, workdir = str(tmp_path / "demo_data"), str(tmp_path / "two_process")
    config = _config(data_root)
    demo_data.ensure_from_config(config.data)  # once, before the processes (they would race on it)
    assert jax.process_count() == 1 and jax.device_count() == 8
    # The 2-process run mostly waits on its own compiles: run it while this process computes the
    # reference (on 2 cores the test takes ~max, not the sum, of the two).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        two_process = pool.submit(_launch_two_processes, data_root, workdir)
        batches = _emulated_two_process_batches(config, NUM_STEPS)
        mesh, rules = sharding.make_mesh(config.mesh), sharding.axis_rules(config.mesh)
        with sharding.activate(mesh, rules):
            program = trainer.build_program(config, mesh, rules)
            state, frozen = trainer.initial_state(config, program)
            losses_1p = {}
            for step, batch in enumerate(batches, start=1):
                state, metrics = program.step_fn(state, frozen, sharding.global_batch(batch, mesh))
                losses_1p[step] = float(metrics["loss"])
                if step == SAVE_EVERY:
                    trainable_at_save = jax.device_get(state.trainable)
        losses_2p = two_process.result()
    assert sorted(losses_2p) == list(range(1, NUM_STEPS + 1))
    for step in losses_1p:
        np.testing.assert_allclose(
            losses_2p[step], losses_1p[step], rtol=1e-5, err_msg=f"step {step}"
        )

    with sharding.activate(mesh, rules):
        # The 2-process checkpoint, restored by one process onto its 8-device mesh.
        manager = checkpoint.make_manager(workdir, read_only=True)
        assert manager.all_steps() == [SAVE_EVERY, NUM_STEPS]
        abstract = program.abstract_state
        restored = checkpoint.restore(
            manager,
            SAVE_EVERY,
            merge_params(abstract.trainable, program.abstract_frozen),
            abstract.opt_state,
            data_iterator=None,
        )
        trainable, frozen = split_params(restored["params"], config.train.trainable)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
            jax.device_get(trainable),
            trainable_at_save,
        )
        state = TrainState(
            step=jnp.asarray(SAVE_EVERY, jnp.int32),
            trainable=trainable,
            opt_state=restored["opt_state"],
        )
        for step in range(SAVE_EVERY + 1, NUM_STEPS + 1):
            state, metrics = program.step_fn(
                state, frozen, sharding.global_batch(batches[step - 1], mesh)
            )
            np.testing.assert_allclose(
                float(metrics["loss"]),
                losses_2p[step],
                rtol=1e-5,
                err_msg=f"step {step} after restoring the 2-process checkpoint",
            )

        # The data iterator state is global (issue 24): it restores in one process, which goes
        # on with the global batch of step SAVE_EVERY + 1.
        one_process_iterator = iter(
            train_pipeline.build_train_dataset(config.data, process_index=0, process_count=1)
        )
        checkpoint.restore(
            manager,
            SAVE_EVERY,
            merge_params(abstract.trainable, program.abstract_frozen),
            abstract.opt_state,
            data_iterator=one_process_iterator,
        )
        following = next(one_process_iterator)
        for key, value in batches[SAVE_EVERY].items():
            np.testing.assert_array_equal(following[key], value, err_msg=key)
        assert os.path.exists(
            os.path.join(manager.directory, str(SAVE_EVERY), "data_iterator", "process_1-of-2.json")
        )
        manager.close()

    # The newest checkpoint damaged after the run (a truncated array file in each process's OCDBT
    # data and the merged one): both processes fail to restore it, agree, and resume from the
    # previous one; process 0 moves the step aside; steps 3-4 train again to the same losses.
    checkpoints = os.path.join(workdir, "checkpoints")
    item = os.path.join(checkpoints, str(NUM_STEPS), "params")
    for data_dir in glob.glob(os.path.join(item, "**", "d"), recursive=True):
        files = [os.path.join(data_dir, name) for name in os.listdir(data_dir)]
        if files:
            os.truncate(max(files, key=os.path.getsize), 100)
    os.remove(os.path.join(workdir, checkpoint.FINAL_MARKER))
    resumed = _launch_two_processes(data_root, workdir)
    for process in range(2):
        with open(os.path.join(workdir, "logs", f"process_{process}.log")) as f:
            log = f.read()
        assert (
            f"resumed from step {SAVE_EVERY}, the newest readable checkpoint "
            f"(unreadable: {NUM_STEPS})" in log
        ), log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    moved = [name for name in os.listdir(checkpoints) if checkpoint.UNREADABLE_TAG in name]
    assert [name.split(checkpoint.UNREADABLE_TAG)[0] for name in moved] == [str(NUM_STEPS)]
    assert checkpoint.finalized_steps(workdir) == [SAVE_EVERY, NUM_STEPS]
    for step in range(SAVE_EVERY + 1, NUM_STEPS + 1):
        np.testing.assert_allclose(
            resumed[step], losses_2p[step], rtol=1e-5, err_msg=f"step {step}"
        )
