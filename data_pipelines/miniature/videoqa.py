"""Video QA datasets in their published layouts, with real encoded clips: MSVD-QA, MSRVTT-QA, iVQA.

With `frames=True` each clip's frames are also written as `<dataset>/frames/<video key>/00001.jpg`,
where the video key is what the annotations name (vid<N>, video<N>, <id>_<start>_<end>).
"""

from __future__ import annotations

from data_pipelines.miniature.writer import Miniature, split

# MSVD-QA's video ids are 1..1970; MSR-VTT's videos are video0..video9999 (train 0-6512, val
# 6513-7009, test 7010-9999).
_MSVD_RANGES = {"train": (1, 1201), "val": (1201, 1301), "test": (1301, 1971)}
_MSRVTT_RANGES = {"train": (0, 6513), "val": (6513, 7010), "test": (7010, 10000)}
_PLAN = {"train": 2, "val": 1, "test": 2}  # videos per split; 2 questions each


def _questions(photo) -> list[tuple[str, str]]:
    """Two single-word-answer questions, the style of the generated MSVD/MSRVTT-QA questions."""
    question, answer = photo.qa[0]
    return [
        ("what is shown in the video?", photo.noun.split()[0]),
        (question.lower(), answer.lower().split()[0]),
    ]


def msvd_qa(m: Miniature) -> None:
    """MSVD-QA (xudejing/video-question-answering) over MSVD's YouTubeClips.

    msvd/{train,val,test}_qa.json  [{"answer", "id", "question", "video_id": N}].
    msvd/youtube_mapping.txt  "<clip name> vid<N>" a line: video_id N is clip vid<N>.
    msvd/YouTubeClips/<clip name>.avi  MSVD's clips, named <YouTube id>_<start>_<end>.
    Verified: just-ask README (files of the MSVD-QA folder), preproc/preproc_msvdqa.py (keys),
    extract/merge_features.py (the mapping file's format, <clip name>.avi); xudejing's
    preprocess_msvdqa.py reads vid<N>.avi after renaming. Not verified: the clips' codec (MPEG-4
    part 2 written).
    """
    corrupt, splits, mapping, next_id = m.corrupts("msvd_qa"), {}, [], 0
    for name, count in _PLAN.items():
        entries = []
        for index in range(count):
            video_id = m.unique_id("msvd", *_MSVD_RANGES[name])
            clip = f"{m.youtube_id()}_{int(m.rng.integers(0, 60))}_{int(m.rng.integers(61, 120))}"
            mapping.append(f"{clip} vid{video_id}")
            relative = f"msvd/YouTubeClips/{clip}.avi"
            photo = m.clip("msvd_qa", relative, frame_dir=f"msvd/frames/vid{video_id}")
            if corrupt and name == "test" and index == 0:
                m.break_media("msvd_qa", name, relative)
            for question, answer in _questions(photo):
                entries.append(
                    {"answer": answer, "id": next_id, "question": question, "video_id": video_id}
                )
                next_id += 1
        path = f"msvd/{name}_qa.json"
        if corrupt and name == "test":
            entries.append(
                {"answer": "cat", "id": next_id, "question": "what is shown in the video?"}
            )
            m.malformed(
                "msvd_qa", name, path, f"entry #{len(entries) - 1}", "missing field 'video_id'"
            )
        m.write_json(path, entries)
        splits[name] = split(
            [path, "msvd/youtube_mapping.txt"], 2 * count, "question", videos=count
        )
    m.write_text("msvd/youtube_mapping.txt", "\n".join(mapping) + "\n")
    source = "antoyang/just-ask README, preproc_msvdqa.py, merge_features.py; xudejing/video-question-answering"
    m.record("msvd_qa", "out", source, splits)


def msrvtt_qa(m: Miniature) -> None:
    """MSRVTT-QA (xudejing/video-question-answering) over MSR-VTT's videos.

    msrvtt/{train,val,test}_qa.json  [{"answer", "category_id", "id", "question", "video_id": N}].
    msrvtt/TrainValVideo/video<N>.mp4 (N < 7010) and msrvtt/TestVideo/video<N>.mp4: MSR-VTT's
        train_val_videos.zip and test_videos.zip.
    Verified: just-ask preproc/preproc_msrvttqa.py (keys) and merge_features.py (video<N> file
    name <-> video_id N); xudejing's preprocess_msrvttqa.py reads video/video<N>.mp4. Not
    verified: the zip folder names (TrainValVideo/TestVideo are the common ones) and the codec
    (H.264 written).
    """
    splits, next_id = {}, 0
    for name, count in _PLAN.items():
        entries = []
        for _ in range(count):
            video_id = m.unique_id("msrvtt", *_MSRVTT_RANGES[name])
            folder = "TestVideo" if name == "test" else "TrainValVideo"
            photo = m.clip(
                "msrvtt_qa",
                f"msrvtt/{folder}/video{video_id}.mp4",
                frame_dir=f"msrvtt/frames/video{video_id}",
            )
            category = int(m.rng.integers(0, 20))
            for question, answer in _questions(photo):
                entries.append(
                    {
                        "answer": answer,
                        "category_id": category,
                        "id": next_id,
                        "question": question,
                        "video_id": video_id,
                    }
                )
                next_id += 1
        path = m.write_json(f"msrvtt/{name}_qa.json", entries)
        splits[name] = split(path, 2 * count, "question", videos=count)
    m.record("msrvtt_qa", "out", "antoyang/just-ask preproc_msrvttqa.py, merge_features.py", splits)


IVQA_COLUMNS = (
    "video_id",
    "start",
    "end",
    "question",
    "answer1",
    "answer2",
    "answer3",
    "answer4",
    "answer5",
)


def ivqa(m: Miniature) -> None:
    """iVQA (antoyang/just-ask): csv annotations and YouTube clips (a tarball on request).

    ivqa/{train,val,test}.csv  columns video_id (the YouTube id), start, end (seconds), question,
        answer1..answer5 (five annotators' answers).
    ivqa/videos/<video_id>_<start>_<end>.webm  one clip per question.
    Verified: just-ask's loaders (data/videoqa_loader.py, preproc_ivqa.py: video_id, question,
    answer1..5; merge_features.py: the first 11 characters of a clip's file name are the
    video_id), misc/server_videoqa.py (start/end come from the annotations). The clip file
    names and the .webm extension are as a public script reads the tarball; the folder name
    ("videos"; just-ask's README says a "video" subfolder) and the column order are not verified.
    """
    splits = {}
    for name, count in (("train", 2), ("val", 1), ("test", 3)):
        rows = []
        for _ in range(count):
            video_id = m.youtube_id()
            start = int(m.rng.integers(0, 300))
            end = start + int(m.rng.integers(5, 20))
            clip = f"{video_id}_{start}_{end}"
            photo = m.clip("ivqa", f"ivqa/videos/{clip}.webm", frame_dir=f"ivqa/frames/{clip}")
            question, answer = photo.qa[0]
            answers = [answer.lower()] * 4 + [photo.noun]
            rows.append([video_id, start, end, question.lower().rstrip("?"), *answers])
        path = m.write_csv(f"ivqa/{name}.csv", IVQA_COLUMNS, rows)
        splits[name] = split(path, count, "question", videos=count)
    m.record("ivqa", "out", "antoyang/just-ask loaders and scripts (see docstring)", splits)
