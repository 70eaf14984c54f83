import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_CORPORA
from neuralda.corpus import normalize_text
from neuralda.errors import NeuraldaError
from neuralda.tokenizer import LINE, POEM_END, STANZA, UNK, Vocab, detokenize, is_word, tokenize


def test_words_keep_inner_apostrophes_and_hyphens():
    tokens = tokenize("Don't fear the sky’s earth-star, in-laws!", end=False)
    assert tokens == ["don't", "fear", "the", "sky’s", "earth-star", ",", "in-laws", "!"]


@pytest.mark.parametrize(
    "text, words",
    [
        ("আমার সোনার বাংলা", ["আমার", "সোনার", "বাংলা"]),  # Bengali vowel signs are combining marks
        ("नमस्ते दुनिया", ["नमस्ते", "दुनिया"]),
        ("İstanbul’da", ["i\u0307stanbul’da"]),  # lower-cased, "İ" is "i" and a combining dot
        ("cafe\u0301 noir", ["cafe\u0301", "noir"]),  # an accent left uncomposed
        ("می\u200cخواهم بروم", ["می\u200cخواهم", "بروم"]),  # Persian writes a zero-width non-joiner inside words
        ("क्\u200dषमा", ["क्\u200dषमा"]),  # a zero-width joiner shapes a Hindi conjunct
        ("കാര്\u200d മഴ", ["കാര്\u200d", "മഴ"]),  # and ends a Malayalam word in its older spelling
    ],
)
def test_combining_marks_and_joiners_stay_in_their_word(text, words):
    tokens = tokenize(text, end=False)
    assert tokens == words and detokenize(tokens) == text.lower()


def test_each_punctuation_mark_is_a_token_and_breaks_are_tokens():
    tokens = tokenize("Night; stars?\nSea.\n\nEnd...")
    assert tokens == ["night", ";", "stars", "?", LINE, "sea", ".", STANZA, "end", ".", ".", ".", POEM_END]


def test_keep_case():
    assert tokenize("Love Sea", keep_case=True, end=False) == ["Love", "Sea"]
    assert tokenize("Love Sea", end=False) == ["love", "sea"]


@pytest.mark.parametrize(
    "text",
    [
        "love, the sea: salt; bread! why? (the moon)",
        'she said "come home," and i came.',
        "“curly quotes,” she wrote, ‘and single ones’",
        "the lovers' eyes, th' old sea, thro' the night",
        "'tis night, and 't is late; i 've seen it",
        "he called them 'flowers,' and smiled",
        "wait -- the sea -- is calling\nthe end --\nand then--nothing",
        "a dash— attached, and one spaced —  like this",
        "him-- forbid it",
        "the word _maya_ in italics",
        "a line\nanother line\n\na new stanza",
    ],
)
def test_round_trip_hand_cases(text):
    text = normalize_text(text)
    assert detokenize(tokenize(text)) == text


def test_detokenize_stops_at_poem_end_and_skips_unknown():
    assert detokenize(["love", UNK, "sea", POEM_END, "more"]) == "love sea"


def test_no_empty_tokens():
    assert all(t.strip() for t in tokenize("  a  ,  b \n\n\n c  ", end=False))


@pytest.mark.skipif(not SHARED_CORPORA.is_dir(), reason="../shared/corpora is not here (a user's clone)")
def test_round_trip_on_shared_corpora_is_lossless():
    texts = [
        normalize_text(json.loads(line)["text"]).lower()
        for path in sorted(SHARED_CORPORA.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert len(texts) > 800
    changed = [t for t in texts if detokenize(tokenize(t)) != t]
    assert not changed, f"{len(changed)} of {len(texts)} poems change in a round trip, first: {changed[0][:200]!r}"


def test_unusual_spacing_is_carried_by_the_marks_not_the_words():
    tokens = tokenize("a ,b -- c --d (e )", end=False)
    assert tokens == ["a", " , ", "b", " -- ", "c", " --", "d", "(", "e", " )"]
    assert detokenize(tokens) == "a ,b -- c --d (e )"
    assert [t for t in tokens if t.strip() != t and is_word(t.strip())] == []


def test_chinese_and_japanese_characters_are_tokens_of_their_own():
    """Scripts without spaces between words: each character is a token and no space is written beside one (a whole
    line was one word, so a model could only replay its training lines, joined by spaces)."""
    assert tokenize("床前明月光，疑是地上霜。", end=False) == [*"床前明月光", "，", *"疑是地上霜", "。"]
    assert detokenize([*"举头望明月", "，", *"低头思故乡", "。"]) == "举头望明月，低头思故乡。"
    assert tokenize("古池や 蛙", end=False) == ["古", "池", "や", " 蛙"]  # a space the poet put is kept
    assert all(is_word(c) for c in ["月", "や", "ア", " 蛙", "爱 "]) and not any(map(is_word, "，・"))
    for text in ("「静かさや」と言う", "the sea 海 is wide", "漢abc", "love, 愛 and sea"):
        assert detokenize(tokenize(text)) == text


def test_spanish_guillemets_are_plain_marks_and_french_spacing_is_carried():
    """«¿Sí?» needs no spacing tokens (they taught a model to write "y¿niños" and "de¡antes"); « la vie » keeps its
    spaces in the marks."""
    assert tokenize("decía «¿Sí?» y ‹no›", end=False) == ["decía", "«", "¿", "sí", "?", "»", "y", "‹", "no", "›"]
    assert tokenize("c'est « la vie »", end=False) == ["c'est", "« ", "la", "vie", " »"]
    assert detokenize(["decía", "«", "quién", "»", "."]) == "decía «quién»."


# Text from every Unicode category, with the marks, quotes, breaks and characters (Chinese, kana) the spacing rules
# look at made common.
_MARKS = st.sampled_from(" \n\r'’\"_-—.,;:!?()“”‘¿¡…«»‹›月やア，。「」（）")
_POEM_TEXT = st.text(st.one_of(st.characters(codec="utf-8"), _MARKS), max_size=80)


@settings(max_examples=400, deadline=None)
@given(_POEM_TEXT, st.booleans())
def test_any_normalised_text_round_trips_with_no_empty_tokens(raw, keep_case):
    text = normalize_text(raw)
    text = text if keep_case else text.lower()
    tokens = tokenize(text, keep_case=keep_case)
    assert all(t.strip() for t in tokens)
    assert detokenize(tokens) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([LINE, STANZA, UNK, "sea", " --", "-- ", "'", '"', ",", "(", "’", "_"]), max_size=30))
def test_any_token_sequence_detokenizes_to_text_that_tokenizes_again(tokens):
    text = detokenize(tokens)
    assert detokenize(tokenize(text)) == text


def test_vocab_specials_order_min_count_and_unknowns(tmp_path):
    vocab = Vocab.build([["sea", "sea", "love", "moon"], ["sea", "love"]], min_count=2)
    assert vocab.itos[:4] == [UNK, LINE, STANZA, POEM_END]
    assert vocab.itos[4:] == ["sea", "love"]
    assert vocab.encode(["moon", "sea"]) == [vocab.unk, vocab.stoi["sea"]]
    vocab.save(tmp_path / "vocab.json")
    again = Vocab.load(tmp_path / "vocab.json")
    assert again.itos == vocab.itos and again.min_count == 2


def test_vocab_load_errors(tmp_path):
    with pytest.raises(NeuraldaError, match="no vocabulary"):
        Vocab.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"tokens": [1, 2]}')
    with pytest.raises(NeuraldaError, match="not a neuralda vocabulary"):
        Vocab.load(tmp_path / "bad.json")


def test_is_word():
    assert is_word("don't") and is_word("earth-star") and is_word("1918")
    assert not is_word(",") and not is_word(LINE) and not is_word(" --")


def test_written_tokens_never_merge_into_a_word_the_model_did_not_write():
    """A model may write a spacing-marked mark where the corpus never had it: "way", " '", "after" must not read
    back as the one word "way'after" (nor "way", "-", "after" as "way-after")."""
    from neuralda.tokenizer import detokenize, is_word, tokenize

    for mark in (" '", "'", "’", "-"):
        seq = ["way", mark, "after"]
        words = [t for t in tokenize(detokenize(seq), end=False) if is_word(t)]
        assert words == ["way", "after"], (mark, detokenize(seq))


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("the lovers' eyes", ["the", "lovers", "'", "eyes"]),
        ("‘come home’ she said", ["‘", "come", "home", "’", "she", "said"]),
        ('"wait,\n"stay"', ['"', "wait", ",", LINE, '"', "stay", '"']),
        ("50% of the sea", ["50", "%", "of", "the", "sea"]),
        (
            "i 've seen 'em, then 'hush' she said",
            ["i", "'", "ve", "seen", "'", "em", ",", "then", "'", "hush", "'", "she", "said"],
        ),
        ("漢abc", ["漢", "abc"]),
        ("th' old sea, o' the hills", ["th", "'", "old", "sea", ",", "o", "'", "the", "hills"]),  # elided, old verse's
    ],
)
def test_usual_spacing_needs_no_spacing_tokens(text, tokens):
    """Text spaced as people usually space it gives plain marks, never marks carrying a space (a second token)."""
    assert tokenize(text, end=False) == tokens
    assert detokenize(tokens) == text  # and a model's plain marks read back as people space them


def test_a_vocabulary_built_from_whole_poems_has_each_special_once_and_loads(tmp_path):
    """Breaks seen in the poems are not added again after the specials: the saved vocabulary must load back."""
    vocab = Vocab.build([tokenize("love, the sea\nthe salt\n\nthe end"), tokenize("sea")])
    assert len(set(vocab.itos)) == len(vocab.itos) and vocab.itos[:4] == [UNK, LINE, STANZA, POEM_END]
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json").itos == vocab.itos


@pytest.mark.parametrize(
    "tokens, message",
    [
        ([UNK, LINE, STANZA, POEM_END, "sea", "sea"], "distinct"),
        ([UNK, STANZA, POEM_END, "sea"], "no <nl>"),
    ],
)
def test_a_damaged_vocabulary_is_refused(tmp_path, tokens, message):
    """A vocabulary with a token twice, or without a break token, is not loaded (ids would not match the model)."""
    (tmp_path / "vocab.json").write_text(json.dumps({"keep_case": False, "min_count": 1, "tokens": tokens}))
    with pytest.raises(NeuraldaError, match=message):
        Vocab.load(tmp_path / "vocab.json")


@pytest.mark.parametrize("min_count", ["1e400", "1.5", "true", "0", '"2"'])
def test_a_vocabulary_s_min_count_is_a_whole_number_above_0(tmp_path, min_count):
    # 1e400 is JSON's infinity to Python: int() of it was an OverflowError traceback; 1.5 was read as 1.
    tokens = [UNK, LINE, STANZA, POEM_END, "sea"]
    (tmp_path / "vocab.json").write_text(f'{{"keep_case": false, "min_count": {min_count}, "tokens": {json.dumps(tokens)}}}')
    with pytest.raises(NeuraldaError, match="min_count must be a whole number above 0"):
        Vocab.load(tmp_path / "vocab.json")


def test_a_keep_case_vocabulary_encodes_poems_with_their_case():
    """--keep-case: the training stream keeps "Love" as the vocabulary's "Love", not as <unk>."""
    vocab = Vocab.build([tokenize("Love the Sea", keep_case=True)], keep_case=True)
    assert vocab.decode(vocab.encode_poems(["Love the Sea"])) == ["Love", "the", "Sea", POEM_END]
