"""The registry's rows: the paper's 26 datasets (InstructBLIP Figure 2) and the demo family.

Positional fields, in order: name, task category, split (held_in / held_out / demo), annotation
format (`data_pipelines.formats`), public training size and where it comes from, metric, eval
mode, zero-shot prompt, decoding; then keyword flags. `_caption`, `_qa` and `_long_text` fill in
the settings a kind of task shares. `registry` indexes the rows by name.
"""

from __future__ import annotations

from data_pipelines.specs import (
    CAPTION_DECODING,
    CAPTION_PROMPT,
    LONG_DECODING,
    MC_PROMPT,
    QA_DECODING,
    QG_PROMPT,
    VQA_PROMPT,
    DatasetSpec,
)

_C, _IQA = "image_captioning", "image_question_answering"
_KQA, _VR = "knowledge_grounded_image_qa", "visual_reasoning"
_QG, _VQA = "image_question_generation", "video_question_answering"


# Captioning: CIDEr on captions decoded with the caption prompt and settings.
_CAPTION = dict(
    metric="cider", eval_mode="generate", eval_prompt=CAPTION_PROMPT, decoding=CAPTION_DECODING
)


def _caption(
    name: str, category: str, split: str, fmt: str, num_train: int | None, source: str, **flags
) -> DatasetSpec:
    return DatasetSpec(name, category, split, fmt, num_train, source, **_CAPTION, **flags)


def _qa(*fields: object, **flags: object) -> DatasetSpec:
    """Question answering and classification: LAVIS's short-answer decoding settings."""
    return DatasetSpec(*fields, QA_DECODING, **flags)


def _long_text(
    name: str, category: str, split: str, fmt: str, num_train: int | None, source: str, prompt: str
) -> DatasetSpec:
    """Free-form text targets (question generation, LLaVA): CIDEr, long decoding."""
    return DatasetSpec(
        name, category, split, fmt, num_train, source, "cider", "generate", prompt, LONG_DECODING
    )


SPECS = [
    # ----- held-in -------------------------------------------------------------------------
    _caption(
        "coco_caption",
        _C,
        "held_in",
        "coco_caption",
        566_747,
        "Karpathy train+restval (113,287 images, 566,747 captions; LAVIS coco_karpathy_train)",
        eval_split="karpathy_test",
    ),
    _caption(
        "web_capfilt",
        _C,
        "held_in",
        "web_capfilt",
        14_000_000,
        "BLIP CapFilt web pairs, 14M (InstructBLIP Sec. 2.1 / BLIP paper)",
    ),
    _caption(
        "textcaps",
        "image_captioning_reading_comprehension",
        "held_in",
        "textcaps",
        109_765,
        "TextCaps v0.1 train: 109,765 captions on 21,953 images (Sidorov et al. 2020)",
        ocr=True,  # the Rosetta OCR tokens of TextVQA (the same images), in training and eval
        eval_split="val",
    ),
    _qa(
        "vqav2",
        _IQA,
        "held_in",
        "vqav2",
        443_757,
        "VQA v2 train2014 questions (visualqa.org)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        short_answer=True,
        eval_split="val",
    ),
    _qa(
        "okvqa",
        _KQA,
        "held_in",
        "okvqa",
        9_009,
        "OK-VQA v1.1 train questions (Marino 2019)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        short_answer=True,
        eval_split="val",
    ),
    _qa(
        "aokvqa",
        _KQA,
        "held_in",
        "aokvqa",
        17_056,
        "A-OKVQA v1.0 train (Schwenk 2022)",
        "accuracy",
        "rank",
        MC_PROMPT,
        short_answer=True,
        eval_split="val",
    ),
    _qa(
        "ocrvqa",
        "image_qa_reading_comprehension",
        "held_in",
        "ocrvqa",
        801_700,
        "approximate: OCR-VQA has 1,002,146 QA pairs, ~80% train (Mishra 2019); measure "
        "with formats.parse and pass sizes= for the exact count",
        "exact_match",
        "generate",
        VQA_PROMPT,
        short_answer=True,
    ),
    _long_text(
        "vqav2_qg",
        _QG,
        "held_in",
        "vqav2",
        443_757,
        "same questions as vqav2",
        QG_PROMPT,
    ),
    _long_text(
        "okvqa_qg",
        _QG,
        "held_in",
        "okvqa",
        9_009,
        "same questions as okvqa",
        QG_PROMPT,
    ),
    _long_text(
        "aokvqa_qg",
        _QG,
        "held_in",
        "aokvqa",
        17_056,
        "same questions as aokvqa",
        QG_PROMPT,
    ),
    _long_text(
        "llava_conversation",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        58_000,
        "LLaVA paper Sec. 3: 58K conversation samples (rounded)",
        "{}",
    ),
    _long_text(
        "llava_detail",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        23_000,
        "LLaVA paper Sec. 3: 23K detailed descriptions (rounded)",
        "{}",
    ),
    _long_text(
        "llava_complex_reasoning",
        "llava_instruct",
        "held_in",
        "llava_instruct",
        77_000,
        "LLaVA paper Sec. 3: 77K complex reasoning samples (rounded)",
        "{}",
    ),
    # ----- held-out ------------------------------------------------------------------------
    _caption(
        "nocaps",
        _C,
        "held_out",
        "nocaps",
        None,
        "no training split (val: 4,500 images)",
        eval_split="val",
    ),
    _caption(
        "flickr30k",
        _C,
        "held_out",
        "flickr30k",
        145_000,
        "Karpathy train: 29,000 images x 5 captions",
        eval_split="karpathy_test_1k",
    ),
    _qa(
        "gqa",
        _VR,
        "held_out",
        "gqa",
        943_000,
        "GQA balanced train, ~943K (Hudson 2019)",
        "exact_match",
        "generate",
        VQA_PROMPT,
        short_answer=True,
        eval_split="testdev_balanced",
    ),
    _qa(
        "vsr",
        _VR,
        "held_out",
        "vsr",
        None,
        "not recorded",
        "accuracy",
        "generate",
        'Based on the image, is this statement true or false? "{}" Answer:',
        eval_split="zeroshot_test",
    ),
    _qa(
        "iconqa",
        _VR,
        "held_out",
        "iconqa",
        None,
        "not recorded",
        "accuracy",
        "rank",
        MC_PROMPT,
        short_answer=True,
        eval_split="test",
    ),
    _qa(
        "vizwiz",
        _IQA,
        "held_out",
        "vizwiz",
        20_523,
        "VizWiz-VQA train (Gurari 2018)",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        short_answer=True,
        eval_split="test-dev",
    ),
    _qa(
        "scienceqa",
        _KQA,
        "held_out",
        "scienceqa",
        None,
        "not recorded (image subset of the 12,726-question train split)",
        "accuracy",
        "rank",
        "Context: {} Question: {} Options: {}. Answer:",
        eval_split="test_img",
    ),
    _qa(
        "textvqa",
        "image_qa_reading_comprehension",
        "held_out",
        "textvqa",
        34_602,
        "TextVQA 0.5.1 train (Singh 2019)",
        "vqa_accuracy",
        "generate",
        "OCR tokens: {}. Question: {} Short answer:",
        short_answer=True,
        ocr=True,
        eval_split="val",
    ),
    _qa(
        "msvd_qa",
        _VQA,
        "held_out",
        "msvd_qa",
        30_933,
        "MSVD-QA train (Xu 2017)",
        "exact_match",
        "rank",
        VQA_PROMPT,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _qa(
        "msrvtt_qa",
        _VQA,
        "held_out",
        "msrvtt_qa",
        158_581,
        "MSRVTT-QA train (Xu 2017)",
        "exact_match",
        "rank",
        VQA_PROMPT,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _qa(
        "ivqa",
        _VQA,
        "held_out",
        "ivqa",
        5_994,
        "iVQA train (Yang et al. 2021, Just Ask)",
        "ivqa_accuracy",
        "generate",
        VQA_PROMPT,
        short_answer=True,
        is_video=True,
        eval_split="test",
    ),
    _qa(
        "visdial",
        "visual_conversational_qa",
        "held_out",
        "visdial",
        1_232_870,
        "VisDial v1.0 train: 123,287 dialogs x 10 rounds",
        "mrr",
        "rank",
        "Dialog history: {}\n Question: {} Short answer:",
        eval_split="val",
    ),
    _qa(
        "hateful_memes",
        "image_classification",
        "held_out",
        "hateful_memes",
        8_500,
        "Hateful Memes train (Kiela 2020)",
        "auc",
        "rank",
        'This is an image with: "{}" written on it. Is it hateful? Answer:',
        eval_split="dev_seen",
    ),
    # ----- demo family (data_pipelines/demo_data.py writes these in the public formats) ---
    _caption(
        "demo_caption",
        _C,
        "demo",
        "coco_caption",
        None,
        "generated by demo_data.py",
    ),
    _qa(
        "demo_vqa",
        _IQA,
        "demo",
        "vqav2",
        None,
        "generated by demo_data.py",
        "vqa_accuracy",
        "generate",
        VQA_PROMPT,
        short_answer=True,
    ),
    _qa(
        "demo_mc",
        _KQA,
        "demo",
        "aokvqa",
        None,
        "generated by demo_data.py",
        "accuracy",
        "rank",
        MC_PROMPT,
        short_answer=True,
    ),
    _long_text(
        "demo_qg",
        _QG,
        "demo",
        "vqav2",
        None,
        "generated by demo_data.py",
        QG_PROMPT,
    ),
]
