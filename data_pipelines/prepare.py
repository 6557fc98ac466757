"""Annotation files + images -> one ArrayRecord file per (dataset, split), for fast random access.

  python -m data_pipelines.prepare --config=configs/demo.py --out=/data/prepared

`--config` is the run config training takes (its `data` section is read; a data-only config such
as configs/data_heldin.py works too), with the same `--config.data.<key>=...` overrides.

Why ArrayRecord and not a TFDS builder: TFDS writes examples through `tf.train.Example` (its
Image/Text features need TensorFlow, which this project does not install). The files written here
are plain ArrayRecord (`array_record`'s writer, `group_size:1` for O(1) random reads) read back by
grain's `ArrayRecordDataSource`; each record is the canonical record with the ORIGINAL encoded
image bytes embedded (sources.serialize_record), so decoding is identical to reading the files.

Unreadable or missing images are skipped, counted and logged with their path; past
`max_bad_fraction` the preparation stops. Next to each file a `.json` sidecar records the counts
and the source; the printed config entries use `array_record=` instead of `ann_path/image_root`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from absl import app, flags
from array_record.python.array_record_module import ArrayRecordWriter
from ml_collections import config_flags
from tqdm import tqdm

from data_pipelines import images, preprocess, sources

logger = logging.getLogger(__name__)


def prepare_entry(
    entry: Mapping[str, Any],
    out_path: str,
    max_bad_fraction: float = preprocess.DATA_DEFAULTS["max_bad_fraction"],
) -> dict[str, Any]:
    """Writes one config entry's records to `out_path`; returns the sidecar dict (counts, paths)."""
    records = sources.load_records(entry, max_bad_fraction)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    writer = ArrayRecordWriter(out_path, "group_size:1")
    written, skipped = 0, []
    try:
        for record in tqdm(records, desc=f"prepare {entry['name']}", unit="ex"):
            try:
                _check_decodable(record)
                data = sources.serialize_record(record)
            except (OSError, images.BadImageError) as error:
                skipped.append(f"{record.get('id', '?')}: {error}")
                logger.warning("skipped %s/%s: %s", entry["name"], record.get("id", "?"), error)
                if len(skipped) > max_bad_fraction * len(records):
                    raise ValueError(
                        f"dataset {entry['name']!r}: {len(skipped)} of {len(records)} images "
                        f"unreadable (max_bad_fraction={max_bad_fraction}); first: {skipped[:5]}"
                    ) from error
                continue
            writer.write(data)
            written += 1
    finally:
        writer.close()
    sidecar = {
        "dataset": entry["name"],
        "array_record": out_path,
        "num_records": written,
        "num_skipped": len(skipped),
        "skipped": skipped[:100],
        "source": {k: entry[k] for k in ("ann_path", "image_root") if k in entry},
    }
    with open(out_path + ".json", "w") as f:
        json.dump(sidecar, f, indent=1)
    return sidecar


def _check_decodable(record: Mapping[str, Any]) -> None:
    """Decode once now, so a corrupt file is caught at preparation, not in every epoch."""
    if "frames" in record:
        for path in record["frames"]:
            images.load_image(path)
    elif "video" in record:
        images.load_clip_frames(record["video"], 1)
    elif "image" in record:
        images.load_image(record["image"])


def prepare_config(data_config: Mapping[str, Any], out_dir: str) -> list[dict[str, Any]]:
    """Every training and eval entry of a data config -> ArrayRecord files under `out_dir`
    (`<out_dir>/<dataset>/<split>.array_record`); returns the sidecars."""
    results = []
    max_bad = float(preprocess.setting(data_config, "max_bad_fraction"))
    entries = list(preprocess.setting(data_config, "datasets")) + list(
        preprocess.setting(data_config, "eval_datasets")
    )
    for entry in entries:
        split = entry.get("split", "train")
        out_path = os.path.join(out_dir, entry["name"], f"{split}{sources.ARRAY_RECORD_SUFFIX}")
        results.append(prepare_entry(entry, out_path, max_bad))
    return results


def _define_flags() -> None:
    """CLI flags, defined only when run as a program (importing two CLIs must not clash)."""
    global _CONFIG, _OUT
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "run config (configs/*.py; its `data` is read) or a data config",
        lock_config=True,
    )
    _OUT = flags.DEFINE_string("out", None, "directory for <dataset>/<split>.array_record")
    flags.mark_flags_as_required(["config", "out"])


def main(argv: list[str]) -> None:
    """Prepares every dataset of --config's data under --out; prints one JSON line each."""
    del argv
    logging.basicConfig(level=logging.WARNING)
    for sidecar in prepare_config(preprocess.data_section(_CONFIG.value), _OUT.value):
        print(
            json.dumps(
                {k: sidecar[k] for k in ("dataset", "array_record", "num_records", "num_skipped")}
            )
        )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
