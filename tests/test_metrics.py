"""Caption metrics: parity with pycocoevalcap (PTB tokenizer, BLEU, ROUGE-L, CIDEr-D, METEOR), warnings, errors,
human agreement and the evaluate module."""

import json
import shutil
import warnings
from pathlib import Path

import pytest

from captioning.evaluation import java, metrics
from captioning.evaluation.metrics import CaptionMetricWarning, compute_caption_metrics, human_agreement, ptb_tokenize

FIXTURE = Path(__file__).parent / "fixtures" / "metric_captions.json"
IMAGES = json.loads(FIXTURE.read_text(encoding="utf-8"))["images"]
PREDICTIONS = {image["image_id"]: image["prediction"] for image in IMAGES}
REFERENCES = {image["image_id"]: image["references"] for image in IMAGES}
SCORED = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")

# pycocoevalcap 1.2 (Java PTBTokenizer, its scorers and meteor-1.5.jar) on tests/fixtures/metric_captions.json.
PYCOCOEVALCAP_FIXTURE_SCORES = {
    "BLEU-1": 0.7629384594564974,
    "BLEU-2": 0.6479812097412379,
    "BLEU-3": 0.5008312092791075,
    "BLEU-4": 0.3626370912381329,
    "METEOR": 0.31852537136164966,
    "ROUGE-L": 0.6091586037625516,
    "CIDEr-D": 1.3375827440758281,
}

# (caption, what pycocoevalcap's PTBTokenizer returns for it), recorded from the jar.
JAR_TOKENIZATIONS = [
    ("A man's dog doesn't like it.", "a man 's dog does n't like it"),
    ("The children's toys and dogs' bones", "the children 's toys and dogs bones"),
    ('"Hello," she said (quietly) ... and left...', "hello she said -lrb- quietly -rrb- and left"),
    ("It's 3.5 meters and 1,000 people / 50% off & more", "it 's 3.5 meters and 1,000 people / 50 % off & more"),
    ("co-operate well-known -- dash - dash --- ----- ——", "co-operate well-known dash dash -----"),
    (
        "Don't can't won't I'm we're they've she'd you'll ain't y'all",
        "do n't ca n't wo n't i 'm we 're they 've she 'd you 'll ai n't y' all",
    ),
    (
        "a b/c 1/2 $5.00 #hashtag @user e-mail: x@y.com http://www.example.com",
        "a b/c 1/2 $ 5.00 #hashtag @user e-mail x@y.com http://www.example.com",
    ),
    (
        "'quoted' `back` ``double'' “smart quotes” ‘single’ «guillemets»",
        "quoted back double smart quotes single guillemets",
    ),
    ("  extra   spaces \t here  ", "extra spaces here"),
    ("hello!? what?! yes; no: maybe!!", "hello !? what ?! yes no maybe !!"),
    (
        "Mr. Smith and Dr. Jones vs. the U.S.A. team, etc. at St. Louis",
        "mr. smith and dr. jones vs. the u.s.a. team etc. at st. louis",
    ),
    ("ellipsis… em—dash en–dash . . . ....", "ellipsis em dash en dash"),
    ("gonna wanna cannot gotta lemme gimme 'tis 'twas", "gon na wan na can not got ta lem me gim me 't is 't was"),
    (
        "o'clock rock'n'roll ma'am O'Neil d'Artagnan l'amour '90s 90's",
        "o'clock rock 'n' roll ma'am o'neil d'artagnan l'amour '90s 90 's",
    ),
    (
        "3 1/2 cups, 12/25/2014 at 10:30, 5-10 or -5 and +5, 1st 2nd 90s",
        "3\xa01/2 cups 12/25/2014 at 10:30 5-10 or -5 and +5 1st 2nd 90s",
    ),
    ("US$ 5 £5 €5 ¢5 ¥5", "us$ 5 # 5 $ 5 cents 5 ¥ 5"),
    ("x²+y² H₂O ½ ¼ ¾ 1½ ° ± × ÷", "x ² + y ² h ₂ o 1/2 1/4 3/4 1 1/2 ° ± × ÷"),
    ("AT&T R&B Q&A and/or w/o b/w TV/DVD 24/7 c++ c#", "at&t r&b q&a and/or w/o b/w tv/dvd 24/7 c++ c#"),
    ("a dog :) and a cat :( ;-)", "a dog :-rrb- and a cat :-lrb- ;--rrb-"),
    ("dog.cat one.two hello.world. photo.jpg www.flickr.com", "dog.cat one.two hello.world photo.jpg www.flickr.com"),
    ("it’s a dog’s life, don’t you think?", "it 's a dog 's life do n't you think"),
    (
        "naïve-looking über-cool Zürich's ÉCOLE İstanbul straße",
        "naïve-looking über-cool zürich 's école i̇stanbul straße",
    ),
    ("(a) [b] {c} (( )) ()", "-lrb- a -rrb- -lsb- b -rsb- -lcb- c -rcb- -lrb- -lrb- -rrb- -rrb- -lrb- -rrb-"),
    ("5'2\" tall and 6′ wide", "5 2 tall and 6 ′ wide"),
    ("", ""),
    ("😀 🐶", ""),
]

# Captions that stress the tokenizer, compared with the jar itself where Java is available.
ADVERSARIAL = [caption for caption, _ in JAR_TOKENIZATIONS] + [
    "Colour of the theatre, a café résumé naïve",
    "A DOG { curly } [square] <b>bold</b> a < b > c",
    "a 3-year-old boy in a t-shirt with an x-ray and a hot-dog",
    "fig. 3 no. 5 ca. 1900 pp. 12 vs. op. 7",
    "a_b a__b *stars* **bold** @ # _ % = + ~ ^ | \\",
    "TWO DOGS PLAYING IN THE SNOW",
    "a . b , c ; d : e ! f ? g",
    "an 8-year-old's birthday party",
    "dogs'' quotes and ''double'' and 'single'",
    "e.g. i.e. a.m. p.m. U.S. army",
    "A man (wearing a hat) rides a bike; it's red.",
    "Sr.B. Inc.The 'a dog' I.I'm 10-15 +5-5 1..2 5. .5 #1 #a1 @_x",
    "call 555-1234 or 555 123 4567; 1/2-inch 1-1/2 2/3rds 50/50 9/11",
    "C.  THE  plan B. then vitamin C. yes a.b-c 1,000-pound x-ray's co-ed's",
    "<a href='x'> <e/> &amp; &quot;hi&quot; R&amp;D",
    "a",
    "The end of the list, as captions end.",  # the jar's last line sits at end of file: keep it plain
]


def pycocoevalcap_scores(gts: dict, res: dict) -> dict:
    """pycocoevalcap's own BLEU, ROUGE-L and CIDEr-D on already tokenized {id: [caption, ...]} dicts."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {
        "BLEU-1": bleu[0],
        "BLEU-2": bleu[1],
        "BLEU-3": bleu[2],
        "BLEU-4": bleu[3],
        "ROUGE-L": rouge,
        "CIDEr-D": cider,
    }


def no_java(monkeypatch) -> None:
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None if name == "java" else which(name))


# ---------------------------------------------------------------------------------------------------------------
# PTB tokenization
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("caption", "expected"), JAR_TOKENIZATIONS)
def test_ptb_tokenize_reproduces_recorded_jar_output(caption, expected):
    assert ptb_tokenize(caption) == expected


def test_ptb_tokenize_rejects_non_strings():
    with pytest.raises(TypeError, match="caption string"):
        ptb_tokenize(["a", "dog"])


@needs_java
def test_ptb_tokenize_matches_pycocoevalcap_tokenizer():
    ptbtokenizer = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    captions = [caption for image in IMAGES for caption in [*image["references"], image["prediction"]]]
    captions += ADVERSARIAL
    # One jar run over all captions, one per line, exactly as pycocoevalcap tokenizes a split.
    tokenized = ptbtokenizer.PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    mismatches = [
        (c, tokenized[i][0], ptb_tokenize(c)) for i, c in enumerate(captions) if tokenized[i][0] != ptb_tokenize(c)
    ]
    assert not mismatches
    assert len(captions) == 40 * 6 + len(ADVERSARIAL)


# ---------------------------------------------------------------------------------------------------------------
# BLEU, ROUGE-L, CIDEr-D, METEOR against pycocoevalcap
# ---------------------------------------------------------------------------------------------------------------


def test_scores_equal_pycocoevalcap_scorers_on_the_same_tokens():
    pytest.importorskip("pycocoevalcap")
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in REFERENCES.items()}
    res = {i: [ptb_tokenize(p)] for i, p in PREDICTIONS.items()}
    expected = pycocoevalcap_scores(gts, res)
    ours = compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    for name in SCORED:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
    # A harder set for the arithmetic: a few images only, uneven reference counts, an empty caption.
    subset = list(REFERENCES)[:7]
    gts = {i: gts[i][: 1 + n % 5] for n, i in enumerate(subset)}
    res = {i: res[i] for i in subset}
    expected = pycocoevalcap_scores(gts, res)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CaptionMetricWarning)  # fewer than 2 references per image on average
        ours = compute_caption_metrics(
            [PREDICTIONS[i] for i in subset], [REFERENCES[i][: 1 + n % 5] for n, i in enumerate(subset)], meteor=False
        )
    for name in SCORED:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name


def test_fixture_scores_equal_recorded_pycocoevalcap_scores():
    ours = compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    for name in SCORED:
        assert ours[name] == pytest.approx(PYCOCOEVALCAP_FIXTURE_SCORES[name], abs=1e-6), name
    assert ours["METEOR"] is None and ours["num_images"] == 40
    assert "SPICE" not in ours


@needs_java
def test_end_to_end_equals_pycocoevalcap_including_meteor():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # As pycocoevalcap/eval.py: references and predictions tokenized by the jar, then every scorer.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in REFERENCES.items()})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in PREDICTIONS.items()})
    expected = pycocoevalcap_scores(gts, res)
    expected["METEOR"], _ = Meteor().compute_score(gts, res)

    ours = compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=True)
    for name in (*SCORED, "METEOR"):
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name
    assert ours["METEOR"] == pytest.approx(PYCOCOEVALCAP_FIXTURE_SCORES["METEOR"], abs=1e-6)


def test_meteor_is_absent_not_zero_without_java(monkeypatch):
    no_java(monkeypatch)
    with pytest.warns(CaptionMetricWarning, match=r"METEOR not computed: no `java` executable"):
        scores = compute_caption_metrics(PREDICTIONS, REFERENCES)
    assert scores["METEOR"] is None
    for name in SCORED:
        assert scores[name] == pytest.approx(PYCOCOEVALCAP_FIXTURE_SCORES[name], abs=1e-6)


def test_meteor_is_absent_without_pycocoevalcap(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: "/usr/bin/java")
    monkeypatch.setattr(java, "pycocoevalcap_dir", lambda: None)
    with pytest.warns(CaptionMetricWarning, match="pycocoevalcap is not installed"):
        scores = compute_caption_metrics(PREDICTIONS, REFERENCES)
    assert scores["METEOR"] is None


def test_spice_is_optional_and_absent_not_zero(monkeypatch):
    assert "SPICE" not in compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    no_java(monkeypatch)
    with pytest.warns(CaptionMetricWarning, match="SPICE not computed"):
        scores = compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False, spice=True)
    assert "SPICE" in scores and scores["SPICE"] is None
    assert scores["CIDEr-D"] == pytest.approx(PYCOCOEVALCAP_FIXTURE_SCORES["CIDEr-D"], abs=1e-6)


def test_list_and_dict_inputs_agree_and_order_does_not_matter():
    as_dict = compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False)
    ids = list(PREDICTIONS)[::-1]
    as_list = compute_caption_metrics([PREDICTIONS[i] for i in ids], [REFERENCES[i] for i in ids], meteor=False)
    for name in SCORED:
        assert as_list[name] == pytest.approx(as_dict[name], abs=1e-12)


def test_better_captions_score_higher():
    perfect = {i: refs[0] for i, refs in REFERENCES.items()}
    poor = dict.fromkeys(REFERENCES, "a picture")
    good_scores = compute_caption_metrics(perfect, REFERENCES, meteor=False)
    poor_scores = compute_caption_metrics(poor, REFERENCES, meteor=False)
    for name in SCORED:
        assert poor_scores[name] < PYCOCOEVALCAP_FIXTURE_SCORES[name] < good_scores[name], name
    assert good_scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)  # the first reference is among the references


# ---------------------------------------------------------------------------------------------------------------
# Warnings and errors
# ---------------------------------------------------------------------------------------------------------------


def test_a_proper_call_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionMetricWarning)
        compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False, expected_num_images=40)


def test_single_image_warns_cider_is_meaningless():
    image = next(iter(PREDICTIONS))
    with pytest.warns(CaptionMetricWarning, match="single image"):
        scores = compute_caption_metrics({image: PREDICTIONS[image]}, {image: REFERENCES[image]}, meteor=False)
    assert scores["CIDEr-D"] == 0.0 and scores["num_images"] == 1


def test_subset_of_the_split_warns():
    with pytest.warns(CaptionMetricWarning, match="expected_num_images=5000"):
        compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False, expected_num_images=5000)
    with pytest.warns(CaptionMetricWarning, match="more than expected_num_images=10"):
        compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False, expected_num_images=10)


def test_teacher_forced_captions_warn():
    with pytest.warns(CaptionMetricWarning, match="teacher_forced"):
        compute_caption_metrics(PREDICTIONS, REFERENCES, meteor=False, teacher_forced=True)


def test_fewer_than_two_references_per_image_warns():
    one_reference = {i: refs[:1] for i, refs in REFERENCES.items()}
    with pytest.warns(CaptionMetricWarning, match="1.00 references per image"):
        compute_caption_metrics(PREDICTIONS, one_reference, meteor=False)


def test_mismatched_ids_are_named():
    references = dict(REFERENCES)
    del references["img_003"]
    references["img_999"] = ["a dog"]
    with pytest.raises(ValueError, match=r"prediction but no references: \['img_003'\].*no prediction: \['img_999'\]"):
        compute_caption_metrics(PREDICTIONS, references, meteor=False)


def test_mismatched_lengths_are_named():
    with pytest.raises(ValueError, match="40 predictions but 39 reference lists"):
        compute_caption_metrics(list(PREDICTIONS.values()), list(REFERENCES.values())[:39], meteor=False)


def test_dict_and_list_cannot_be_mixed():
    with pytest.raises(ValueError, match="both as dicts"):
        compute_caption_metrics(PREDICTIONS, list(REFERENCES.values()), meteor=False)


def test_image_without_references_is_rejected():
    references = dict(REFERENCES, img_007=[])
    with pytest.raises(ValueError, match="'img_007' has no references"):
        compute_caption_metrics(PREDICTIONS, references, meteor=False)


def test_empty_inputs_are_rejected():
    with pytest.raises(ValueError, match="no images to score"):
        compute_caption_metrics([], [], meteor=False)
    with pytest.raises(ValueError, match="no images to score"):
        compute_caption_metrics({}, {}, meteor=False)


def test_malformed_captions_are_rejected():
    with pytest.raises(ValueError, match="wrap a single reference in a list"):
        compute_caption_metrics(["a dog"], ["a dog runs"], meteor=False)
    with pytest.raises(ValueError, match="one caption string"):
        compute_caption_metrics([["a dog", "a cat"]], [["a dog runs"]], meteor=False)


# ---------------------------------------------------------------------------------------------------------------
# Human agreement
# ---------------------------------------------------------------------------------------------------------------


def test_human_agreement_of_identical_references_is_perfect():
    references = [
        ["a dog runs on the grass"] * 3,
        ["two cats sleep on a red sofa"] * 3,
        ["a man rides his bike down the street"] * 3,
    ]
    human = human_agreement(references, meteor=False)
    assert human["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert human["ROUGE-L"] == pytest.approx(1.0)
    assert human["CIDEr-D"] == pytest.approx(10.0)
    assert human["num_images"] == 3


def test_human_agreement_equals_leave_one_out_by_hand():
    human = human_agreement(REFERENCES, meteor=False)
    rounds = []
    for k in range(5):
        predictions = {i: refs[k] for i, refs in REFERENCES.items()}
        others = {i: refs[:k] + refs[k + 1 :] for i, refs in REFERENCES.items()}
        rounds.append(compute_caption_metrics(predictions, others, meteor=False))
    for name in SCORED:
        assert human[name] == pytest.approx(sum(r[name] for r in rounds) / 5, abs=1e-9), name
    assert human["METEOR"] is None and human["num_images"] == 40


def test_human_agreement_keeps_extra_references_as_references():
    references = [
        ["a dog runs", "a dog is running", "a brown dog runs fast"],
        ["two cats", "cats sleeping", "two cats asleep", "a pair of cats"],
    ]
    human = human_agreement(references, meteor=False)
    rounds = [
        compute_caption_metrics(
            [refs[k] for refs in references], [refs[:k] + refs[k + 1 :] for refs in references], meteor=False
        )
        for k in range(3)  # the smallest reference count
    ]
    for name in SCORED:
        assert human[name] == pytest.approx(sum(r[name] for r in rounds) / 3, abs=1e-9), name


def test_human_agreement_needs_two_references():
    with pytest.raises(ValueError, match=r"at least 2 references per image.*\['b'\]"):
        human_agreement({"a": ["x y", "x z"], "b": ["only one"]}, meteor=False)


def test_human_agreement_reports_missing_meteor_once(monkeypatch):
    no_java(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        human = human_agreement(REFERENCES)
    assert human["METEOR"] is None
    assert sum("METEOR not computed" in str(w.message) for w in caught) == 1


# ---------------------------------------------------------------------------------------------------------------
# evaluate module
# ---------------------------------------------------------------------------------------------------------------


def test_evaluate_load_local_module_matches(tmp_path):
    evaluate = pytest.importorskip("evaluate")
    path = Path(metrics.__file__).parent / "caption_metric"
    metric = evaluate.load(str(path), cache_dir=str(tmp_path))
    ids = list(PREDICTIONS)
    predictions, references = [PREDICTIONS[i] for i in ids], [REFERENCES[i] for i in ids]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptionMetricWarning)
        scores = metric.compute(predictions=predictions, references=references, meteor=False, expected_num_images=40)
    direct = compute_caption_metrics(predictions, references, meteor=False)
    assert scores.keys() == direct.keys()
    for name in SCORED:
        assert scores[name] == pytest.approx(direct[name], abs=1e-12)
        assert scores[name] == pytest.approx(PYCOCOEVALCAP_FIXTURE_SCORES[name], abs=1e-6)
    with pytest.warns(CaptionMetricWarning, match="teacher_forced"):
        metric.compute(predictions=predictions, references=references, meteor=False, teacher_forced=True)
