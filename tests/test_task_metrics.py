"""Task metrics against values worked out by hand on fixed strings."""

import math
import socket

import pytest

from trainer.evaluation import metrics as task_metrics
from trainer.evaluation.metrics import exact_match, normalize_answer, rouge_l, score, token_f1


def test_normalize_answer_drops_case_punctuation_symbols_and_extra_spaces():
    assert normalize_answer("  Hello,   WORLD! ¿Qué tal? «ok» 50 € ") == "hello world qué tal ok 50"
    assert normalize_answer("ＰＡＲＩＳ") == "paris"  # fullwidth letters, NFKC
    assert normalize_answer("Straße") == normalize_answer("STRASSE")
    assert normalize_answer("U.S.") == "u.s"  # inner marks stay: see the exact_match test below
    assert normalize_answer("The cat") == "the cat"  # articles stay: not every language has English's


def test_exact_match_ignores_case_punctuation_and_spacing_only():
    assert exact_match("Paris!", "  paris ") == 100.0
    assert exact_match("«Да», конечно.", "да конечно") == 100.0
    assert exact_match("The Paris", "Paris") == 0.0
    assert exact_match("Paris", "Lyon") == 0.0
    assert exact_match("The answer is 42.", "the answer is 42") == 100.0


@pytest.mark.parametrize("prediction, reference", [
    ("3.14", "31.4"), ("-5", "5"), ("$1,000", "$100.0"), ("10/3", "103"), ("0.5", "05"),
    ("−5", "5"), (".5", "5"), ("2+2", "22"), ("U.S.", "US"),
])
def test_exact_match_keeps_signs_decimal_points_and_inner_marks(prediction, reference):
    # Each pair scored 100 when normalisation deleted every punctuation mark.
    assert exact_match(prediction, reference) == 0.0


def test_exact_match_still_ignores_marks_around_numbers():
    assert exact_match("-5.", "-5") == exact_match("($1,000)", "$1,000") == exact_match("“3.14”", "3.14") == 100.0
    assert exact_match("+.25", "+.25") == 100.0


def test_token_f1_by_hand():
    # 2 shared words: precision 2/3, recall 2/2, F1 = 2 x 2/3 x 1 / (2/3 + 1) = 0.8.
    assert token_f1("The cat sat.", "the cat") == pytest.approx(80.0)
    # Counts are clipped: "the" is shared once. P = 1/3, R = 1/2, F1 = 2 x 1/6 / (5/6) = 0.4.
    assert token_f1("the the the", "the cat") == pytest.approx(40.0)
    # A bag of words: the same words in another order are a perfect match.
    assert token_f1("on the mat the cat sat", "the cat sat on the mat") == pytest.approx(100.0)
    assert token_f1("", "") == 100.0
    assert token_f1("", "cat") == token_f1("cat", "") == token_f1("!!", "cat") == 0.0


def test_rouge_l_by_hand():
    # Reference 6 words, prediction 7; LCS "the cat on the mat" = 5 words:
    # P = 5/7, R = 5/6, F = 2PR / (P + R) = 2 x 5 / (7 + 6) = 10/13.
    assert rouge_l("The cat lay on the red mat.", "the cat sat on the mat") == pytest.approx(100 * 10 / 13)
    # Same words, other order: LCS "the cat sat" = 3 of 6 on each side -> F = 0.5.
    assert rouge_l("on the mat the cat sat", "the cat sat on the mat") == pytest.approx(50.0)
    assert rouge_l("", "") == 100.0
    assert rouge_l("", "cat") == 0.0


def test_rouge_l_scores_non_latin_scripts():
    from rouge_score import rouge_scorer

    # Russian: reference 4 words, prediction 4, LCS "кошка сидит на" = 3 -> F = 2 x 3 / 8 = 0.75.
    prediction, reference = "кошка сидит на полу", "Кошка сидит на ковре."
    assert rouge_l(prediction, reference) == pytest.approx(75.0)
    # Greek: "ο σκύλος" against "Ο σκύλος τρέχει": LCS 2, P = 2/2, R = 2/3 -> F = 2 x 2 / 5 = 0.8.
    assert rouge_l("ο σκύλος", "Ο σκύλος τρέχει!") == pytest.approx(80.0)
    # Why the tokenizer is ours: rouge-score's own keeps only [a-z0-9] and sees no words.
    assert rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure == 0.0


def test_bleu_by_hand_pools_ngrams_over_the_corpus():
    predictions = ["the cat sat on the mat", "Paris"]
    references = ["the cat sat on a mat today", "Paris"]
    # 13a tokens; clipped matches over both examples (the second has only a 1-gram):
    #   1-grams: the (once: the reference has one), cat, sat, on, mat = 5 of 6; Paris 1 of 1 -> 6 of 7
    #   2-grams: the cat, cat sat, sat on       = 3 of 5  (on the, the mat are not in the reference)
    #   3-grams: the cat sat, cat sat on        = 2 of 4
    #   4-grams: the cat sat on                 = 1 of 3
    # Brevity: 7 predicted words against 8 -> BP = exp(1 - 8/7).
    by_hand = 100 * math.exp(1 - 8 / 7) * (6 / 7 * 3 / 5 * 2 / 4 * 1 / 3) ** (1 / 4)  # 46.9
    assert score(predictions, references)["bleu"] == pytest.approx(by_hand)
    # BLEU keeps case and punctuation (standard sacreBLEU): "paris" is not "Paris".
    assert score(["paris"], ["Paris"])["bleu"] == 0.0


def test_bleu_of_short_answers_uses_the_orders_that_exist():
    # No prediction has 2+ words, so only 1-grams count: 1 of 2 right, BP = 1 -> 50.
    # (Standard corpus BLEU would average in log(0) for the missing orders: 0.)
    assert score(["Paris", "blue"], ["Paris", "red"])["bleu"] == pytest.approx(50.0)


def test_perfect_predictions_score_100_on_every_metric():
    references = ["Paris", "positive", "The cat sat on the mat, and the dog slept by the door.",
                  "Кошка сидит на ковре.", "ο σκύλος τρέχει"]
    result = score(references, references)
    for name in task_metrics.METRICS:
        assert 0.0 <= result[name] <= 100.0
        assert result[name] == pytest.approx(100.0), name
    assert result["examples"] == 5


def test_unrelated_predictions_score_0():
    result = score(["blue sky today", "seven"], ["the cat sat", "Paris"])
    assert result == {"exact_match": 0.0, "token_f1": 0.0, "bleu": 0.0, "rouge_l": 0.0, "examples": 2}


def test_means_over_examples():
    # exact match 100 and 0 -> 50; F1 100 and 80 -> 90 ("the cat sat" against "the cat", above).
    result = score(["Paris.", "the cat sat"], ["paris", "the cat"])
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["token_f1"] == pytest.approx(90.0)


def test_empty_predictions_and_empty_lists():
    assert score(["", ""], ["the cat", "Paris"]) == {
        "exact_match": 0.0, "token_f1": 0.0, "bleu": 0.0, "rouge_l": 0.0, "examples": 2}
    assert score([], []) == {"exact_match": 0.0, "token_f1": 0.0, "bleu": 0.0, "rouge_l": 0.0, "examples": 0}


def test_lists_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 predictions and 2 references"):
        score(["a", "b", "c"], ["a", "b"])


def test_scoring_needs_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("task metrics tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert score(["the cat sat"], ["the cat sat"])["rouge_l"] == pytest.approx(100.0)
