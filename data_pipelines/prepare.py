"""Annotation files + media -> TFDS datasets (array_record), one per dataset and split.

  python -m data_pipelines.prepare --config=configs/demo.py --out=/data/tfds [--num_workers=N]

`--config` is the run config training takes (its `data` section is read; a data-only config such
as configs/data_heldin.py works too), with the same `--config.data.<key>=...` overrides. Every
training and eval entry read from annotation files becomes `OUT/<dataset>/<split>/1.0.0`
(data_pipelines/tfds_data.py: the layout and the feature spec); each prints one JSON line with the
config entry that reads it (`{"name", "tfds": <dir>, "split"}`).

The media files' bytes are stored as they are (no re-encoding), after one decode to catch corrupt
files: unreadable or missing media are skipped, counted and logged with their path (and listed in
the dataset's metadata.json); past `max_bad_fraction` the preparation stops. Reading and
decoding run in `--num_workers` processes (default: every core this process may use); a progress
bar shows the rate. With `--beam_pipeline_options=runner=...` they run as an Apache Beam pipeline
instead (TFDS's Beam support; `pip install .[beam]`), on one machine (DirectRunner) or a cluster
(DataflowRunner, SparkRunner, FlinkRunner), writing the same records.

Idempotent per split: a split already prepared from the same annotation files is skipped, one
prepared from other files is an error (delete its directory to prepare it again), and an
interrupted split is prepared again from the start.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from absl import app, flags
from tqdm import tqdm

from data_pipelines import images, preprocess, sources, tfds_data
from ib_jax.contract import cli
from ib_jax.contract.config import DATA_DEFAULTS

logger = logging.getLogger(__name__)
_CHUNK = 8  # records per task sent to a worker: amortizes the IPC, keeps the bar moving


def entry_split(entry: Mapping[str, Any]) -> str:
    """The split an entry prepares to: its `split`, or "train" (training entries have none)."""
    return str(entry.get("split") or "train")


def _source(entry: Mapping[str, Any]) -> dict[str, Any]:
    """What a prepared split was made from (compared on a rerun): absolute paths, options."""
    ann = entry.get("ann_path")
    source = {"ann_path": [os.path.abspath(p) for p in ([ann] if isinstance(ann, str) else ann)]}
    source["image_root"] = os.path.abspath(entry["image_root"])
    source["parse_options"] = dict(entry.get("parse_options") or {})
    return json.loads(json.dumps(source))  # as metadata.json gives it back (lists, not tuples)


def _encode(record: Mapping[str, Any], fields: Sequence[str]) -> tuple[dict | None, str]:
    """In a worker: (TFDS example, "") or (None, why it was skipped)."""
    try:
        return tfds_data.to_example(record, fields), ""
    except (OSError, images.BadImageError) as error:
        return None, f"{record.get('id', '?')}: {error}"


def _examples(
    records: Sequence[dict[str, Any]],
    fields: Sequence[str],
    label: str,
    num_workers: int,
    max_bad_fraction: float,
    metadata: dict[str, Any],
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, example) in record order, skipping what cannot be read; at the end `metadata`
    gets num_examples, num_skipped and the first 100 reasons (`skipped`)."""
    encode = functools.partial(_encode, fields=fields)
    pool = multiprocessing.Pool(num_workers) if num_workers > 1 else None
    skipped: list[str] = []
    try:
        results = pool.imap(encode, records, _CHUNK) if pool else map(encode, records)
        for index, (example, error) in enumerate(
            tqdm(results, total=len(records), desc=f"prepare {label}", unit="ex")
        ):
            if example is not None:
                yield index, example
                continue
            skipped.append(error)
            logger.warning("skipped %s/%s", label, error)
            if len(skipped) > max_bad_fraction * len(records):
                raise ValueError(
                    f"dataset {label}: {len(skipped)} of {len(records)} media unreadable "
                    f"(max_bad_fraction={max_bad_fraction}); first: {skipped[:5]}"
                )
    finally:
        if pool:
            pool.terminate()
    metadata.update(
        num_examples=len(records) - len(skipped), num_skipped=len(skipped), skipped=skipped[:100]
    )


def _encode_keyed(
    indexed: tuple[int, dict[str, Any]], fields: Sequence[str], label: str
) -> Iterator[tuple[int, dict[str, Any]]]:
    """In a Beam worker: (index, record) -> (index, TFDS example), nothing for a bad record."""
    example, error = _encode(indexed[1], fields)
    if example is None:
        logger.warning("skipped %s/%s", label, error)
        return
    yield indexed[0], example


def _beam_examples(records: Sequence[dict[str, Any]], fields: Sequence[str], label: str) -> Any:
    """The examples as a Beam transform (TFDS runs it in its pipeline): the same keys, hence the
    same record order, as the single-machine path."""
    import apache_beam as beam

    return beam.Create(list(enumerate(records))) | beam.FlatMap(
        _encode_keyed, fields=list(fields), label=label
    )


def beam_download_config(pipeline_options: str) -> Any:
    """TFDS's download config running Beam with `key=value,...` options (as TFDS's own CLI
    takes them), e.g. "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp"."""
    import apache_beam as beam

    flags_ = [f"--{option}" for option in pipeline_options.split(",") if option]
    options = beam.options.pipeline_options.PipelineOptions(flags=flags_)
    return tfds_data.tfds.download.DownloadConfig(beam_options=options)


def prepare_entry(
    entry: Mapping[str, Any],
    out_dir: str,
    *,
    num_workers: int = 1,
    max_bad_fraction: float = DATA_DEFAULTS["max_bad_fraction"],
    beam_pipeline_options: str | None = None,
) -> dict[str, Any]:
    """Writes one config entry as `out_dir/<dataset>/<split>/1.0.0` unless already there.

    `beam_pipeline_options` (a string, "" for Beam's DirectRunner defaults): the examples are
    encoded in an Apache Beam pipeline (any runner: Dataflow, Spark, Flink) instead of a local
    process pool; the records written are the same. There the bad-example bound is checked once
    the pipeline has run (the split is then deleted) and the reasons are in the workers' logs.

    Returns a summary: dataset, split, tfds_dir, status ("prepared" or "exists"), num_examples,
    num_skipped, seconds, examples_per_s, and `entry` (the config entry that reads it)."""
    name, split = sources.entry_name(entry), entry_split(entry)
    label = f"{name}/{split}"
    for key in ("ann_path", "image_root"):
        if key not in entry:
            raise KeyError(f"dataset {label}: config entry needs {key!r} to be prepared")
    target = tfds_data.dataset_dir(out_dir, name, split)
    summary = {"dataset": name, "split": split, "tfds_dir": target}
    summary["entry"] = {"name": name, "tfds": target, "split": split}
    if entry.get("user"):  # your own data: the entry reads it back with its task and template
        summary["entry"]["user"] = dict(entry["user"])
    start = time.perf_counter()
    if os.path.exists(os.path.join(target, "dataset_info.json")):
        with open(os.path.join(target, "metadata.json")) as f:
            info = json.load(f)
        if info.get("source") != _source(entry):
            raise ValueError(
                f"dataset {label}: {target!r} was prepared from {info.get('source')}, the config "
                f"now reads {_source(entry)}; delete the directory to prepare it again"
            )
        return {**summary, "status": "exists", "num_examples": info.get("num_examples")}
    parent = os.path.dirname(target)
    for stale in os.listdir(parent) if os.path.isdir(parent) else ():
        if stale.startswith("incomplete."):  # an interrupted run's partial files
            shutil.rmtree(os.path.join(parent, stale))
    records = sources.load_records(entry, max_bad_fraction)
    fields = tfds_data.record_fields(records, name)
    metadata = tfds_data.tfds.core.MetadataDict(source=_source(entry))
    beam = beam_pipeline_options is not None
    if beam:
        examples = _beam_examples(records, fields, label)
    else:
        examples = _examples(records, fields, label, num_workers, max_bad_fraction, metadata)
    builder = tfds_data.RecordsBuilder(
        dataset=name,
        split=split,
        fields=fields,
        data_dir=out_dir,
        examples=examples,
        metadata=metadata,
    )
    config = beam_download_config(beam_pipeline_options) if beam else None
    with tempfile.TemporaryDirectory() as downloads:  # TFDS wants one; nothing is downloaded
        builder.download_and_prepare(download_dir=downloads, download_config=config)
    if beam:
        _check_beam_output(builder, records, label, max_bad_fraction, metadata)
    seconds = time.perf_counter() - start
    return {
        **summary,
        "status": "prepared",
        "num_examples": metadata["num_examples"],
        "num_skipped": metadata["num_skipped"],
        "seconds": round(seconds, 2),
        "examples_per_s": round(len(records) / seconds, 1),
    }


def _check_beam_output(
    builder: Any,
    records: Sequence[dict[str, Any]],
    label: str,
    max_bad_fraction: float,
    metadata: dict[str, Any],
) -> None:
    """After a Beam run: the counts into metadata.json, or the split deleted past the bound."""
    written = builder.info.splits[builder.builder_config.name].num_examples
    skipped = len(records) - written
    if skipped > max_bad_fraction * len(records):
        shutil.rmtree(builder.data_dir)
        raise ValueError(
            f"dataset {label}: {skipped} of {len(records)} media unreadable "
            f"(max_bad_fraction={max_bad_fraction}); their paths are in the Beam workers' logs"
        )
    metadata.update(num_examples=written, num_skipped=skipped, skipped=[])
    metadata.save_metadata(builder.data_dir)


def prepare_config(
    data_config: Mapping[str, Any],
    out_dir: str,
    *,
    num_workers: int = 1,
    beam_pipeline_options: str | None = None,
) -> list[dict[str, Any]]:
    """Every training and eval entry of a data config read from annotation files -> its TFDS
    dataset under `out_dir`; returns the summaries (entries that already read TFDS are left)."""
    max_bad = float(preprocess.setting(data_config, "max_bad_fraction"))
    entries = list(preprocess.setting(data_config, "datasets")) + list(
        preprocess.setting(data_config, "eval_datasets")
    )
    return [
        prepare_entry(
            entry,
            out_dir,
            num_workers=num_workers,
            max_bad_fraction=max_bad,
            beam_pipeline_options=beam_pipeline_options,
        )
        for entry in entries
        if "tfds" not in entry
    ]


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (importing two CLIs must not clash)."""
    global _CONFIG, _OUT, _WORKERS, _BEAM
    _CONFIG = cli.define_config_flag()  # a run config (its `data` is read) or a data config
    _OUT = flags.DEFINE_string("out", None, "TFDS data_dir: <out>/<dataset>/<split>/1.0.0")
    _WORKERS = flags.DEFINE_integer(
        "num_workers", None, "processes reading and checking media (default: available cores)"
    )
    _BEAM = flags.DEFINE_string(
        "beam_pipeline_options",
        None,
        "run as an Apache Beam pipeline (pip install .[beam]) with these comma-separated "
        "key=value options, e.g. runner=DirectRunner,direct_num_workers=4 or "
        "runner=DataflowRunner,project=P,region=R,temp_location=gs://B/tmp; unset: a process pool",
    )
    flags.mark_flags_as_required(["config", "out"])


def main(argv: list[str]) -> None:
    """Prepares every dataset of --config's data under --out; prints one JSON line each."""
    del argv
    logging.basicConfig(level=logging.WARNING)
    # TFDS logs (through absl) every custom builder config and its own progress bars; ours shows.
    logging.getLogger("absl").setLevel(logging.ERROR)
    tfds_data.tfds.disable_progress_bar()
    workers = _WORKERS.value or available_cores()
    data = preprocess.data_section(_CONFIG.value)
    summaries = prepare_config(
        data, _OUT.value, num_workers=workers, beam_pipeline_options=_BEAM.value
    )
    for summary in summaries:
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(cli.guarded("prepare", main))
