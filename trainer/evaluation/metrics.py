"""Task metrics: generated completions scored against reference completions.

For prompt/completion data the trainer completes held-out prompts and scores the
completions here. Every metric is "higher is better" on a 0..100 scale, so any of
them can pick the best weights with --config.train.select_best_by:

- exact_match: the share of completions equal to their reference after
  normalize_answer() (case, spacing and the punctuation around words ignored;
  signs, decimal points and other marks inside a word count). All or nothing per
  example. Pick it for short fixed answers: classification labels, extracted spans,
  numbers, yes/no.
- token_f1: word overlap per example, as in SQuAD: a bag of normalised words,
  order ignored, with partial credit. Pick it for short free answers, where
  "in Paris, France" against "Paris" should earn something.
- bleu: corpus BLEU (sacreBLEU): matching word 1- to 4-grams pooled over all
  examples, with a penalty for being too short. Precision-minded and sensitive to
  word order. Pick it for longer generated text judged against one right wording,
  translations above all.
- rouge_l: per example, the longest common subsequence of normalised words
  (in order, gaps allowed), as an F-measure of its precision and recall. Pick it
  for longer generated text where covering the reference matters, such as
  summaries.

Words are whatever whitespace separates (after normalize_answer()): scripts that
write no spaces (Chinese, Japanese, Thai) make each unbroken run one word there, so
token_f1 and rouge_l give little partial credit and come close to exact_match.

Nothing is downloaded: sacrebleu and rouge-score are plain packages, and the only
part of NLTK that rouge-score touches is its built-in Porter stemmer, which we do
not use.
"""

import collections
import functools
import unicodedata

from trainer import settings

METRICS = settings.TASK_METRICS


def _is_mark(char: str) -> bool:
    # Every Unicode punctuation (P*) and symbol (S*) category, not string.punctuation:
    # «», ¿, 。 and € count too.
    return unicodedata.category(char)[0] in "PS"


# A sign or decimal point that opens a number is part of the answer: "-5" is not "5"
# and ".5" is not "5". (U+2212 is the typographic minus.)
_NUMBER_OPENERS = "+-\u2212."


def _strip_word(word: str) -> str:
    """The word without the punctuation and symbols around it; what is inside stays."""
    end = len(word)
    while end and _is_mark(word[end - 1]):
        end -= 1
    start = 0
    while start < end and _is_mark(word[start]):
        opens_number = word[start] in _NUMBER_OPENERS and any(
            c.isdigit() for c in word[start + 1:start + 3])  # "-5", "-.5", "+.25"
        if opens_number:
            break
        start += 1
    return word[start:end]


def normalize_answer(text: str) -> str:
    """Casefold, NFKC, single spaces, and the punctuation around each word removed.

    "  The CAT, sat! " -> "the cat sat"; "ＰＡＲＩＳ" (fullwidth) -> "paris";
    "«Да», конечно." -> "да конечно"; "50 €" -> "50".
    Punctuation inside a word is content and stays: "3.14" is not "31.4", "-5" is
    not "5", "$1,000" is not "$100.0" ("1,000" against "100.0"), "10/3" is not "103",
    "U.S." is "u.s" and not "us", "don't" is not "dont". Deleting every punctuation
    mark, as SQuAD's normalisation does, scored each of those pairs a match.
    """
    # NFKC first: it turns fullwidth letters, ligatures and compatibility forms such
    # as "Ⅻ" into plain letters ("XII") that casefold() can then lower. casefold() is
    # lower() plus the folds caseless matching needs ("Straße" = "STRASSE").
    text = unicodedata.normalize("NFKC", text).casefold()
    # Stripped word by word, not only at the ends of the answer, so that token_f1 and
    # rouge_l see "paris" in "in Paris, France". A word that is all punctuation ("—",
    # "€") disappears.
    # SQuAD's normalisation also drops "a", "an" and "the". We keep them: this package
    # fine-tunes on any language, and only in English are those three words articles
    # (Spanish "a" means "to"); dropping them would make other languages' answers
    # match where they differ.
    return " ".join(word for word in map(_strip_word, text.split()) if word)


def exact_match(prediction: str, reference: str) -> float:
    """100.0 when the two are equal after normalize_answer(), else 0.0."""
    return 100.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's F1 over the bags of normalised words, 0..100.

    "the cat sat" against "the cat": 2 shared words, precision 2/3, recall 2/2,
    F1 = 2 x 2/3 x 1 / (2/3 + 1) = 0.8 -> 80.0. A repeated word counts as often as
    both sides have it: "the the the" against "the cat" shares 1 word, 1/3 and 1/2
    -> 40.0.
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        # Nothing expected and nothing said is right; otherwise one side has no words.
        return 100.0 if predicted == expected else 0.0
    shared = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 100.0 * 2 * precision * recall / (precision + recall)


class _NormalizedWords:
    """rouge-score's tokenizer interface: the words of normalize_answer().

    rouge-score's default tokenizer replaces everything outside [a-z0-9] with
    spaces, so Russian, Greek or Chinese text has no words at all and scores 0.
    """

    def tokenize(self, text: str) -> list[str]:
        return normalize_answer(text).split()


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    # Imported here, not at the top: rouge-score imports all of NLTK (~0.4 s), which
    # code that only needs METRICS should not pay.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_NormalizedWords())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of the normalised words, 0..100.

    "the cat lay on the red mat" (7 words) against "the cat sat on the mat" (6):
    the longest common subsequence "the cat on the mat" has 5 words, precision 5/7,
    recall 5/6, F = 2 x 5 / (7 + 6) = 10/13 -> 76.9. Word order counts, unlike
    token_f1: "on the mat the cat sat" has every word but an LCS of 3 -> 50.0.
    """
    if not normalize_answer(prediction) and not normalize_answer(reference):
        return 100.0  # rouge-score says 0 here; token_f1's rule, so a perfect answer scores 100 on all
    # RougeScorer.score takes the reference first.
    return 100.0 * _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


@functools.lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    # sacreBLEU's defaults (13a tokenizer, case kept, exp smoothing) on the raw text,
    # so the number compares with published sacreBLEU scores, except effective_order.
    # It changes nothing while any completion has 4+ words; when all are shorter there
    # are no 4-grams, and the standard setting scores log(0) for them: BLEU 0 for every
    # checkpoint. With it, BLEU uses the orders that exist: "Paris", "blue" against
    # "Paris", "red" is 1 of 2 words right -> 50.0, not 0.0.
    return BLEU(effective_order=True)


def per_example(predictions: list[str], references: list[str]) -> dict:
    """{metric: [score of each example]} for the metrics that are means over examples
    (all but bleu), for intervals over examples."""
    pairs = list(zip(predictions, references))
    return {"exact_match": [exact_match(p, r) for p, r in pairs], "token_f1": [token_f1(p, r) for p, r in pairs],
            "rouge_l": [rouge_l(p, r) for p, r in pairs]}


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    # sacreBLEU's score can come out a rounding error above 100 (100.00000000000004).
    return min(100.0, _bleu().corpus_score(list(predictions), [list(references)]).score)


def score(predictions: list[str], references: list[str]) -> dict:
    """{"exact_match", "token_f1", "bleu", "rouge_l", "examples"} for paired lists.

    exact_match, token_f1 and rouge_l are means over examples; bleu pools n-gram
    counts over the corpus (a mean of per-example BLEU would zero out every short
    completion). An empty completion scores 0 (unless its reference is empty too).
    64 completions of 200 words take 0.55 s, most of it rouge-score's pure-Python
    LCS table (200 x 200 cells per example).
    """
    if len(predictions) != len(references):
        raise ValueError(f"task_metrics.score needs one reference per prediction: got "
                         f"{len(predictions)} predictions and {len(references)} references.")
    n = len(predictions)
    if n == 0:
        return {**{name: 0.0 for name in METRICS}, "examples": 0}
    each = per_example(predictions, references)
    return {
        "exact_match": sum(each["exact_match"]) / n,
        "token_f1": sum(each["token_f1"]) / n,
        "bleu": corpus_bleu(predictions, references),
        "rouge_l": sum(each["rouge_l"]) / n,
        "examples": n,
    }
