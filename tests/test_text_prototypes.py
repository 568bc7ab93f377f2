"""Text prototypes: hand-worked cases of the official word-frequency selection (docs/method.md, "4. Text prototypes")."""

import pytest

from vldd.stages.text_prototypes import (
    STOPWORDS,
    class_common_words,
    score,
    select_text_prototypes,
    tokenize,
    top_words,
)

DESCRIPTIONS = [
    "The dog has a fluffy golden coat. Its tail is fluffy.",  # cluster 0
    "A golden dog sitting on grass with a fluffy coat.",  # cluster 0
    "The dog runs on the Beach. Its ears are wet.",  # cluster 1: capital B, so "beach" does not match raw text
    "A wet dog on a sandy beach near the sea.",  # cluster 1
    "The dog is jumping.",  # cluster 1
    "An outlier dog with stripes stripes stripes.",  # LOF outlier: must not count anywhere
]
ASSIGNMENT = [0, 0, 1, 1, 1, -1]


def test_tokenize_splits_sentences_and_keeps_alphabetic_lowercase_tokens():
    tokens = tokenize("The dog's tail is long. It isn't black-and-white, e.g. brown. Cats cannot fly! 3 legs?")
    # sentence split detaches "long." and "brown."; "dog's" -> dog + 's; "isn't" -> is + n't; cannot -> can + not
    assert tokens == ["the", "dog", "tail", "is", "long", "it", "is", "brown", "cats", "can", "not", "fly", "legs"]


def test_stopwords_are_nltk_english_alphabetic_entries():
    assert {"the", "a", "its", "is", "on", "with", "mightn", "wouldn", "y"} <= STOPWORDS
    assert "near" not in STOPWORDS and "dog" not in STOPWORDS
    assert all(w.isalpha() for w in STOPWORDS) and len(STOPWORDS) == 153


def test_class_common_words_use_document_frequency_over_inliers():
    tokens = [tokenize(d) for d, a in zip(DESCRIPTIONS, ASSIGNMENT) if a >= 0]
    assert class_common_words(tokens, 0.7) == {"dog"}  # in 5 of 5 descriptions; "the"/"a" are stopwords
    assert "fluffy" in class_common_words(tokens, 0.4)  # 2 of 5 descriptions >= 0.4 x 5


def test_top_words_drop_stopwords_class_name_substrings_and_common_words_keeping_first_seen_ties():
    tokens = [tokenize(DESCRIPTIONS[0]), tokenize(DESCRIPTIONS[1])]
    words = top_words(tokens, "golden retriever", {"dog"}, top_k=10)
    assert words == [("fluffy", 3), ("coat", 2), ("tail", 1), ("sitting", 1), ("grass", 1)]
    # "golden" is a substring of the class name; with another class name it is counted
    assert ("golden", 2) in top_words(tokens, "labrador", {"dog"}, top_k=10)


def test_score_is_case_sensitive_substring_match_on_raw_text():
    words = [("beach", 2), ("wet", 2)]
    assert score(DESCRIPTIONS[2], words) == 2  # "Beach" does not contain "beach"
    assert score(DESCRIPTIONS[3], words) == 4
    assert score("seat", [("sea", 5)]) == 5  # substring, not word, matching (the official quirk)


def test_select_text_prototypes_hand_worked():
    chosen = select_text_prototypes(DESCRIPTIONS, ASSIGNMENT, "golden retriever", top_k=2, common_threshold=0.7)
    assert len(chosen) == 2
    # cluster 0: top words fluffy(3), coat(2); both descriptions score 5, the first wins the tie
    assert chosen[0].top_words == [("fluffy", 3), ("coat", 2)]
    assert (chosen[0].prompt, chosen[0].score, chosen[0].member) == (DESCRIPTIONS[0], 5, 0)
    # cluster 1: beach(2), wet(2); the capitalised "Beach" loses 2 points, so the second description wins
    assert chosen[1].top_words == [("beach", 2), ("wet", 2)]
    assert (chosen[1].prompt, chosen[1].score, chosen[1].member, chosen[1].fallback) == (DESCRIPTIONS[3], 4, 3, None)


def test_outliers_take_no_part():
    # with the outlier counted as an inlier of cluster 1, "stripes" (3) would top cluster 1 and win
    as_inlier = select_text_prototypes(DESCRIPTIONS, ASSIGNMENT[:-1] + [1], "golden retriever", top_k=2,
                                      common_threshold=0.7)
    assert as_inlier[1].prompt == DESCRIPTIONS[5]
    chosen = select_text_prototypes(DESCRIPTIONS, ASSIGNMENT, "golden retriever", top_k=2, common_threshold=0.7)
    assert all("stripes" not in dict(c.top_words) for c in chosen)


@pytest.mark.parametrize("fallback, expected", [("nearest", "The dog is here."), ("class_name", "golden retriever")])
def test_all_zero_scores_fall_back_instead_of_an_empty_prompt(fallback, expected):
    descriptions = ["The dog.", "The dog is here.", "A dog."]  # only stopwords and the class-common "dog"
    chosen = select_text_prototypes(descriptions, [0, 0, 0], "golden retriever", fallback=fallback, nearest=[1],
                                    common_threshold=0.7)
    assert chosen[0].prompt == expected and chosen[0].fallback == fallback and chosen[0].score == 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="3 descriptions for 2"):
        select_text_prototypes(["a", "b", "c"], [0, 0], "x", common_threshold=0.7)
    with pytest.raises(ValueError, match="'medoid'"):
        select_text_prototypes(["a"], [0], "x", fallback="medoid", common_threshold=0.7)
