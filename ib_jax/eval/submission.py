"""Evaluation-server submission files, for held-out splits whose answers are not public.

The paper reports VizWiz on test-dev, whose answers only the VizWiz evaluation server (EvalAI)
holds. The eval job scores the public val split locally, under the name `vizwiz_val` (a proxy,
never reported as test-dev), and writes the server's results file next to the predictions. The
VizWiz-VQA challenge's results format (vizwiz.org, "Results Format"):

    results = [result]
    result = {
        "image": string, # e.g., 'VizWiz_test_00020000.jpg'
        "answer": string
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from etils import epath

# The dataset whose paper split is server-scored -> the name its local (val) score is reported as.
LOCAL_NAMES = {"vizwiz": "vizwiz_val"}
VIZWIZ_IMAGE_SUFFIX = ".jpg"  # every VizWiz image is a JPEG; record ids drop the suffix


def vizwiz_results(predictions: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Prediction records of the eval job ({"id": "VizWiz_test_00020000", "prediction": str},
    the id as `data_pipelines.formats` gives it: the image file name without its suffix) ->
    the server's results list. A null prediction (non-finite output) is submitted as the empty
    answer: the server wants one answer per image."""
    results = []
    for record in predictions:
        image = str(record.get("id") or "")
        if not image:
            raise ValueError(f"VizWiz prediction without an image id: {dict(record)!r}")
        if not os.path.splitext(image)[1]:
            image += VIZWIZ_IMAGE_SUFFIX
        answer = record.get("prediction")
        results.append({"image": os.path.basename(image), "answer": str(answer or "")})
    return results


def write_vizwiz(path: str | os.PathLike, predictions: Iterable[Mapping[str, Any]]) -> int:
    """Write the VizWiz server's results file to `path` (a JSON list; a local path or a bucket
    URL, through `etils.epath` as the eval job's other outputs); returns how many answers."""
    results = vizwiz_results(predictions)
    images = [r["image"] for r in results]
    if len(set(images)) != len(images):
        raise ValueError(f"VizWiz results for {str(path)!r} name an image twice")
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return len(results)


WRITERS = {"vizwiz": write_vizwiz}

__all__ = ["LOCAL_NAMES", "WRITERS", "vizwiz_results", "write_vizwiz"]
