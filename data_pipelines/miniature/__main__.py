"""`python -m data_pipelines.miniature --out=DIR`: write the 26-dataset miniature and its manifest.

The manifest goes to DIR/manifest.json (per dataset: files, media, per-split example counts);
one line per dataset is printed.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from data_pipelines.miniature import write_miniature
from ib_jax.contract import cli

_OUT = flags.DEFINE_string(
    "out", None, "Directory to write the miniature into (empty or absent).", required=True
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed for ids, texts and picture choices.")
_FRAMES = flags.DEFINE_bool("frames", False, "Also write each video's frames as JPEG directories.")
_CORRUPT = flags.DEFINE_bool(
    "corrupt",
    False,
    "Add an unreadable file and a malformed entry to a few datasets (fault tests).",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete a non-empty --out first.")


def main(argv: list[str]) -> None:
    del argv
    manifest = write_miniature(
        _OUT.value,
        _SEED.value,
        corrupt=_CORRUPT.value,
        frames=_FRAMES.value,
        overwrite=_OVERWRITE.value,
    )
    manifest_path = os.path.join(_OUT.value, "manifest.json")
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
    for name, entry in manifest["datasets"].items():
        counts = ", ".join(
            f"{split} {s['examples']} {s['unit']}s" for split, s in entry["splits"].items()
        )
        print(f"{name:24s} held-{entry['held']:3s} {counts}")
    for name, broken in manifest["corrupted"].items():
        print(
            f"corrupted {name}: {len(broken['unreadable'])} unreadable, {len(broken['malformed'])} malformed"
        )
    print(
        f"tokenizers: {os.path.join(_OUT.value, 'tokenizers')} ({', '.join(manifest['tokenizers'])})"
    )
    print(f"manifest: {manifest_path}")


if __name__ == "__main__":
    app.run(cli.guarded("miniature", main))
