"""Stage 3: text prototypes (docs/method.md, "4. Text prototypes") — word frequencies, no embeddings, no language model.

For each k-means cluster, the description whose words best cover the cluster's most frequent distinctive words is
chosen. Exactly as the official code computes it:

- tokens: NLTK `word_tokenize` (Punkt sentence split, then the Treebank-style word tokenizer), lowercased, only
  `str.isalpha()` tokens kept;
- class-common words: in >= threshold x (number of inlier descriptions) of the class's descriptions;
- per cluster: term frequency over the cluster's tokens, without NLTK's English stopwords, words that are a substring
  of the class name, and class-common words; the top `top_k` by `Counter.most_common`;
- score of a description: sum of the counts of top words that are a substring of the raw description
  (case-sensitive); the first description with the strictly highest score wins.

NLTK's data (Punkt's trained English parameters, the stopword list) is a download, impossible offline and on a
Space, so vldd carries what matters: the alphabetic stopwords (the entries with apostrophes can never equal an
alphabetic token) and Punkt's algorithm with a built-in list of common abbreviations instead of the trained ones.
The word tokenizer class is NLTK's own.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from ..configs.distill import TextPrototypeConfig  # the defaults of the settings below: declared once, there

# NLTK's English stopword list, alphabetic entries only (the others contain apostrophes).
STOPWORDS = frozenset("""
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it its
itself they them their theirs themselves what which who whom this that these those am is are was were be been being
have has had having do does did doing a an the and but if or because as until while of at by for with about against
between into through during before after above below to from up down in out on off over under again further then once
here there when where why how all any both each few more most other some such no nor not only own same so than too
very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma mightn mustn
needn shan shouldn wasn weren won wouldn
""".split())

# Abbreviations after which Punkt does not end a sentence (the trained English model learns these from a corpus).
ABBREVIATIONS = frozenset(
    "e.g i.e etc vs approx mr mrs ms dr prof st jr sr inc ltd co no fig cm mm ft lb oz sq min max ca".split())


@functools.lru_cache(maxsize=1)
def _tokenizers():
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params), NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """Lowercased alphabetic word tokens of `text`, as `[w.lower() for w in word_tokenize(text) if w.isalpha()]`."""
    sentences, words = _tokenizers()
    return [token.lower() for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)
            if token.isalpha()]


def class_common_words(token_lists: list[list[str]], threshold: float) -> set[str]:
    """Words (not stopwords) that occur in at least threshold x len(token_lists) of the descriptions."""
    document_frequency = Counter(word for tokens in token_lists for word in set(tokens))
    limit = threshold * len(token_lists)
    return {word for word, count in document_frequency.items() if count >= limit and word not in STOPWORDS}


def top_words(token_lists: list[list[str]], class_name: str, common: set[str], top_k: int) -> list[tuple[str, int]]:
    """The cluster's `top_k` most frequent words, without stopwords, class-name substrings and class-common words."""
    counts = Counter(word for tokens in token_lists for word in tokens
                     if word not in STOPWORDS and word not in class_name and word not in common)
    return counts.most_common(top_k)


def score(description: str, words: list[tuple[str, int]]) -> int:
    """Sum of the counts of the top words that occur (as substrings, case-sensitive) in the raw description."""
    return sum(count for word, count in words if word in description)


@dataclass
class TextPrototype:
    """The prompt chosen for one cluster, and why."""

    prompt: str  # the description used to generate this cluster's image
    top_words: list[tuple[str, int]] = field(default_factory=list)  # the cluster's distinctive words with counts
    score: int = 0  # the chosen description's score
    member: int | None = None  # index (into the class's descriptions) of the chosen description; None = class name
    fallback: str | None = None  # None when chosen by score; "nearest" or "class_name" when every score was 0


def select_text_prototypes(descriptions: list[str], assignment: list[int], class_name: str, *,
                           common_threshold: float, top_k: int = TextPrototypeConfig.top_k,
                           fallback: str = TextPrototypeConfig.fallback,
                           nearest: list[int] | None = None) -> list[TextPrototype]:
    """Chooses one description per cluster of one class.

    Args:
        descriptions: every description of the class, aligned with `assignment`.
        assignment: cluster of each description's image; -1 marks LOF outliers, which take no part.
        class_name: the label name; words that are substrings of it are not distinctive.
        top_k: how many most-frequent cluster words score the descriptions (tpk).
        common_threshold: document-frequency fraction above which a word is class-common. No default: a run's is
            derived from its dataset (`DistillConfig.resolve`).
        fallback: when every description of a cluster scores 0 (the official code then returns an empty prompt):
            "nearest" uses the description of the image nearest the cluster centre (`nearest[c]`, else the
            cluster's first), "class_name" uses the class name.
        nearest: per cluster, the index into `descriptions` of the image nearest its centre.
    """
    if len(descriptions) != len(assignment):
        raise ValueError(f"got {len(descriptions)} descriptions for {len(assignment)} cluster assignments")
    if fallback not in ("nearest", "class_name"):
        raise ValueError(f"`fallback` must be 'nearest' or 'class_name', got {fallback!r}")
    tokens = [tokenize(d) for d in descriptions]
    inliers = [i for i, c in enumerate(assignment) if c >= 0]
    common = class_common_words([tokens[i] for i in inliers], common_threshold)
    n_clusters = max(assignment, default=-1) + 1
    prototypes = []
    for cluster in range(n_clusters):
        members = [i for i in inliers if assignment[i] == cluster]
        words = top_words([tokens[i] for i in members], class_name, common, top_k)
        best, best_score = None, 0
        for i in members:
            s = score(descriptions[i], words)
            if s > best_score:
                best, best_score = i, s
        if best is not None:
            prototypes.append(TextPrototype(descriptions[best], words, best_score, best))
        elif fallback == "nearest" and members:
            pick = nearest[cluster] if nearest is not None else members[0]
            prototypes.append(TextPrototype(descriptions[pick], words, 0, pick, "nearest"))
        else:
            prototypes.append(TextPrototype(class_name, words, 0, None, "class_name"))
    return prototypes
