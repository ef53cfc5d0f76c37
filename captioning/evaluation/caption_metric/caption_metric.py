"""🤗 evaluate module for the COCO caption metrics: `evaluate.load("path/to/captioning/caption_metric")`.

It wraps :func:`captioning.evaluation.metrics.compute_caption_metrics` (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D as pycocoevalcap
reports them). evaluate copies this file into its modules cache before importing it, so it imports the installed
`captioning` package rather than anything next to it.
"""

import datasets
import evaluate

_DESCRIPTION = """\
The COCO caption metrics, numerically equal to pycocoevalcap's: captions are PTB-tokenized (lower-cased,
punctuation removed) and scored with corpus BLEU-1..4, METEOR 1.5, ROUGE-L and CIDEr-D, optionally SPICE.
BLEU, ROUGE-L and CIDEr-D are computed in Python; METEOR and SPICE run the jars pycocoevalcap ships and are None
(with a warning) when Java or a jar is missing. CIDEr-D's document frequencies come from the references of the
images scored together, so compute over the whole split at once.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per image.
    references (`list[list[str]]`): the reference captions of each image, in the order of `predictions`.
    meteor (`bool`, defaults to `True`): compute METEOR (needs Java and pycocoevalcap).
    spice (`bool`, defaults to `False`): compute SPICE (needs Java and pycocoevalcap's SPICE jars).
    expected_num_images (`int`, *optional*): the split's size; scoring a different number of images warns.
    teacher_forced (`bool`, defaults to `False`): the captions come from teacher-forced logits; warns.
Returns:
    `dict` with "BLEU-1".."BLEU-4", "METEOR" (float or None), "ROUGE-L", "CIDEr-D" (0..10), "SPICE" (if requested)
    and "num_images".
Examples:
    >>> metric = evaluate.load("captioning/caption_metric")
    >>> scores = metric.compute(predictions=["a dog runs"], references=[["a dog is running", "a dog runs"]])
"""

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any Target
  Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
  Doll{\\'a}r, Piotr and Zitnick, C. Lawrence}, journal={arXiv:1504.00325}, year={2015}}
"""


def _compute_caption_metrics():
    # Imported here rather than at the top: evaluate scans top-level imports and would tell a user without the
    # package to `pip install captioning`, which is the wrong name.
    try:
        from captioning.evaluation.metrics import compute_caption_metrics
    except ImportError as error:
        raise ImportError(
            "caption_metric needs the captioner package: `pip install -e .` in the captioner repository"
        ) from error
    return compute_caption_metrics


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CaptionMetric(evaluate.Metric):
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE) as pycocoevalcap reports them."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[list[str]],
        meteor: bool = True,
        spice: bool = False,
        expected_num_images: int | None = None,
        teacher_forced: bool = False,
    ) -> dict:
        return _compute_caption_metrics()(
            list(predictions),
            [list(refs) for refs in references],
            meteor=meteor,
            spice=spice,
            expected_num_images=expected_num_images,
            teacher_forced=teacher_forced,
        )
