"""trainer.diagnosis.audit: each defect seeded into a clean hand-written corpus is found,
with its figure and severity, and the clean corpus itself raises nothing.

No TensorFlow and nothing downloaded: the tokenizer is a word-level one trained
here on the corpus with the `tokenizers` library.
"""

import random
import re

import pytest

from trainer.diagnosis import audit

# Forty sentences with no shared skeleton, no digits and no mid-sentence names.
SENTENCES = [
    "The river rose overnight and carried away the old wooden bridge near the mill.",
    "My grandmother kept her recipes in a tin box that smelled of cinnamon.",
    "Researchers measured the glacier's retreat using photographs taken a century apart.",
    "A small bakery on the corner sells bread that is still warm at dawn.",
    "He forgot his umbrella, so he waited under the station roof until the storm passed.",
    "The committee postponed its decision because two members were travelling abroad.",
    "Owls hunt mostly by sound, tilting their heads to locate mice beneath the snow.",
    "She repaired the bicycle chain with pliers borrowed from a neighbour.",
    "Most of the village gathered in the square to watch the lanterns drift upward.",
    "Learning a second language changes how you notice the grammar of your first.",
    "The orchestra tuned for several minutes while latecomers searched for their seats.",
    "Frost had painted delicate ferns across every window of the farmhouse.",
    "Engineers tested the new pump at twice its rated pressure without a single leak.",
    "Children collected smooth pebbles along the shore and sorted them by colour.",
    "The museum reopened after repairs, displaying tapestries that had been stored for decades.",
    "Nobody expected the quiet librarian to win the regional chess tournament.",
    "Heavy clouds gathered over the hills, and the farmers hurried to bring in the hay.",
    "A good editor cuts the sentences that the writer loved most.",
    "The ferry crossing took longer than usual because of fog in the channel.",
    "Bees communicate the direction of flowers through a dance performed inside the hive.",
    "After the power cut, we played cards by candlelight and told ghost stories.",
    "The startup struggled to hire programmers willing to relocate to a remote town.",
    "Fresh basil wilts quickly, so add it to the sauce just before serving.",
    "Astronomers spotted a comet that returns to the inner solar system every seventy years.",
    "His handwriting was so untidy that even he could not read his notes later.",
    "The old lighthouse keeper logged every passing ship in a leather-bound journal.",
    "Volunteers planted hundreds of oak saplings along the eroded riverbank.",
    "A sudden gust lifted the tent and sent it tumbling across the campsite.",
    "Translators often argue about whether to preserve rhythm or literal meaning.",
    "The cat ignored its expensive bed and slept in the cardboard box instead.",
    "Traffic slowed to a crawl as snowploughs cleared the mountain pass.",
    "Her first novel was rejected by eleven publishers before it became a bestseller.",
    "Copper pipes turn green over time as the metal reacts with moisture in the air.",
    "The teacher encouraged students to ask questions rather than memorise answers.",
    "Street musicians played jazz beneath the arches while tourists tossed coins.",
    "Sailors once navigated by the stars, reading the night sky like a map.",
    "The soup needed more salt, but nobody wanted to tell the proud cook.",
    "Wind turbines on the ridge turned slowly in the light evening breeze.",
    "During the drought, the reservoir shrank to reveal the ruins of a drowned village.",
    "We argued about the ending of the film all the way home on the bus.",
]
TRAIN, VALIDATION = SENTENCES[:32], SENTENCES[32:]
# Eight paragraphs of five sentences (62-74 words): long enough that one
# changed word keeps Jaccard >= 0.8 on 5-shingles, i.e. (n - 9) / (n + 1).
PARAGRAPHS = [" ".join(SENTENCES[i:i + 5]) for i in range(0, 40, 5)]


@pytest.fixture(scope="module")
def tokenize():
    """A word-level tokenizer trained on the corpus: ~1.1 tokens per word."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    return lambda texts: [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def severities(findings, check):
    return [f.severity for f in findings if f.check == check]


def replace_word(text: str, index: int, word: str) -> str:
    words = text.split()
    words[index] = word
    return " ".join(words)


# ----------------------------------------------------------------------------- text forms


def test_normalise_lowercases_drops_punctuation_and_collapses_spaces():
    assert audit.normalise("  Hello,  World!\n\tIt's (really)  me. ") == "hello world its really me"
    assert audit.normalise("snake_case -- dash") == "snakecase dash"
    assert audit.normalise("...") == ""


def test_mask_variables_replaces_fillers_but_not_sentence_starts():
    assert (audit.mask_variables("Order 1234 shipped on 2024-03-01 to Alice.")
            == "Order <NUM> shipped on <DATE> to <NAME>.")
    assert (audit.mask_variables("Call me at 14:30 on March 3, 2024 or at 9pm.")
            == "Call me at <TIME> on <DATE> or at <TIME>.")
    assert (audit.mask_variables("Write to bo.li@example.org or see https://example.org/faq.")
            == "Write to <EMAIL> or see <URL>.")
    # The first word of each sentence stays; a name after an honorific does not.
    assert audit.mask_variables("Alice met Bob. Then  Carol paid Dr. Ng 3,250.50 euros.") == \
        "Alice met <NAME>. Then <NAME> paid Dr. <NAME> <NUM> euros."


def test_template_key_is_shared_only_by_fillers():
    a = audit.template_key("Order 1234 shipped on 2024-03-01 to Alice.")
    b = audit.template_key("Order 98 shipped on 2023-12-24 to Bruno.")
    c = audit.template_key("Order 98 was lost on 2023-12-24 near Bruno.")
    assert a == b == "order num shipped on date to name"
    assert c != a


# ----------------------------------------------------------------------------- duplicates


def test_exact_duplicates_error_at_ten_percent():
    # 40 clean + 5 copies differing only in case and punctuation: 5 / 45 = 11.1%.
    copies = [s.upper().replace(",", "") for s in SENTENCES[:5]]
    stats = audit.duplicate_stats(SENTENCES + copies)
    assert stats["exact_duplicates"] == 5
    assert stats["exact_duplicate_rate"] == pytest.approx(5 / 45)
    assert stats["near_duplicate_rate"] == pytest.approx(5 / 45)  # exact copies are near ones too
    assert stats["exact_examples"][0] == (SENTENCES[0], copies[0])
    findings = audit.duplicate_findings(stats)
    assert [f.severity for f in findings] == ["error"]  # no second finding for the same copies
    assert "11.1% (5 of 45)" in findings[0].figure


def test_one_exact_duplicate_in_forty_one_is_a_warning():
    findings = audit.duplicate_findings(audit.duplicate_stats(SENTENCES + [SENTENCES[7]]))
    assert [(f.check, f.severity) for f in findings] == [("duplicates", "warning")]
    assert findings[0].data["exact_duplicate_rate"] == pytest.approx(1 / 41)


def test_near_duplicates_with_one_word_changed():
    assert min(len(p.split()) for p in PARAGRAPHS) >= 49
    near = [replace_word(PARAGRAPHS[0], 30, "purple"), replace_word(PARAGRAPHS[3], 25, "seldom")]
    stats = audit.duplicate_stats(PARAGRAPHS + near)
    assert stats["exact_duplicate_rate"] == 0
    assert stats["near_duplicates"] == 2
    assert stats["near_duplicate_rate"] == pytest.approx(2 / 10)
    assert stats["examples"][0] == (PARAGRAPHS[0][:199] + "…", near[0][:199] + "…")  # cut to 200 chars
    findings = audit.duplicate_findings(stats)
    assert [f.severity for f in findings] == ["error"]
    assert "20.0% (2 of 10)" in findings[0].figure


def test_rewritten_paragraph_is_not_a_near_duplicate():
    # Ten words changed, one every sixth word: the shingles barely overlap.
    rewritten = PARAGRAPHS[0]
    for index in range(0, 60, 6):
        rewritten = replace_word(rewritten, index, "different")
    stats = audit.duplicate_stats(PARAGRAPHS + [rewritten])
    assert stats["near_duplicates"] == 0
    assert audit.duplicate_findings(stats) == []


def test_lsh_finds_seeded_near_copies_among_many_documents():
    rng = random.Random(0)
    vocabulary = [f"w{i}" for i in range(5_000)]
    docs = [" ".join(rng.choices(vocabulary, k=rng.randint(60, 80))) for _ in range(2_000)]
    sources = rng.sample(range(2_000), 50)
    docs += [replace_word(docs[i], 30, "changed") for i in sources]
    stats = audit.duplicate_stats(docs)
    assert stats["exact_duplicates"] == 0
    assert stats["near_duplicates"] == 50


# ----------------------------------------------------------------------------- templates and diversity


def orders(n: int) -> list[str]:
    names = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jules"]
    return [f"Order {1000 + 37 * i} shipped on 2024-03-{1 + i % 28:02d} to {names[i % len(names)]}."
            for i in range(n)]


# distinct-n figures of a varied corpus, so only the template figures decide.
VARIED = {"distinct_1": 0.5, "distinct_2": 0.9, "sample_words": 600}


def test_templates_error_at_thirty_percent():
    # 20 orders among 60 docs: the first is the template's origin, 19 repeat it.
    stats = audit.template_stats(SENTENCES + orders(20))
    assert stats["templated_documents"] == 19
    assert stats["template_rate"] == pytest.approx(19 / 60)
    assert stats["largest_template_share"] == pytest.approx(20 / 60)
    assert stats["template_examples"][0] == {"template": "Order <NUM> shipped on <DATE> to <NAME>.",
                                             "documents": 20, "example": orders(1)[0]}
    findings = audit.diversity_findings({**stats, **VARIED}, 60)
    assert [(f.check, f.severity) for f in findings] == [("templates", "error")]


def test_few_templates_are_a_warning_and_copies_are_not_templates():
    # 6 orders (5 repeats of 46 = 10.9%) plus 2 exact copies, which duplicates reports instead.
    stats = audit.template_stats(SENTENCES + orders(6) + [SENTENCES[0], orders(1)[0]])
    assert stats["templated_documents"] == 5
    assert stats["template_rate"] == pytest.approx(5 / 48)
    findings = audit.diversity_findings({**stats, **VARIED}, 48)
    assert severities(findings, "templates") == ["warning"]


def test_distinct_n_counts_unique_unigrams_and_bigrams():
    stats = audit.distinct_n_stats(["a b a b", "a b c"])
    # Words: 7, unique 3. Bigrams inside docs: ab ba ab | ab bc = 5, unique 3.
    assert stats["distinct_1"] == pytest.approx(3 / 7)
    assert stats["distinct_2"] == pytest.approx(3 / 5)


def test_repetitive_data_barely_varies():
    rng = random.Random(1)
    docs = [" ".join(rng.choices(["yes", "no", "maybe"], k=20)) for _ in range(50)]
    stats = audit.diversity_stats(docs)
    assert stats["distinct_2"] == pytest.approx(9 / 950)  # 9 possible bigrams over 50 x 19
    assert severities(audit.diversity_findings(stats, len(docs)), "diversity") == ["warning"]


# ----------------------------------------------------------------------------- lengths


def test_length_histogram_bins_up_to_block_size():
    stats = audit.length_stats([10, 32, 33, 64, 100, 128, 129, 500], block_size=128, batching="packed")
    assert stats["histogram"] == [(32, 2), (64, 2), (128, 2), (None, 2)]
    assert stats["max"] == 500
    # Packed: 996 tokens = 7 rows of 128 + 100 dropped; 2 of 8 docs span rows.
    assert (stats["rows"], stats["dropped_tail_tokens"]) == (7, 100)
    assert stats["cross_block_docs_share"] == pytest.approx(2 / 8)
    findings = audit.length_findings(stats)
    assert [f.severity for f in findings] == ["info"]
    assert "--config.data.block_size=512" in findings[0].fix


def test_padded_truncation_warning():
    # 5 of 100 docs are 200 tokens at block_size 128: 5 x 72 = 360 of 10,500 tokens cut (3.4%).
    stats = audit.length_stats([100] * 95 + [200] * 5, block_size=128, batching="padded")
    assert stats["truncated_docs_share"] == pytest.approx(0.05)
    assert stats["truncated_tokens_share"] == pytest.approx(360 / 10_500)
    # Real tokens 95 x 100 + 5 x 128 = 10,140 of 100 x 128 = 12,800 positions.
    assert stats["padding_share"] == pytest.approx(1 - 10_140 / 12_800)
    findings = audit.length_findings(stats)
    assert severities(findings, "length") == ["warning"]
    assert "--config.data.block_size=256" in findings[0].fix
    assert "--config.data.batching=packed" in findings[0].fix


def test_padded_truncation_error_when_a_tenth_of_tokens_is_cut():
    # Half the docs are 300 tokens: 50 x 172 = 8,600 of 20,000 tokens cut (43%).
    stats = audit.length_stats([100] * 50 + [300] * 50, block_size=128, batching="padded")
    assert stats["truncated_tokens_share"] == pytest.approx(0.43)
    findings = audit.length_findings(stats, n_positions=256)
    assert severities(findings, "length") == ["error"]
    assert "--config.data.block_size=256" in findings[0].fix  # 512 would pass the model's 256 positions


def test_packed_corpus_smaller_than_one_block_is_an_error():
    findings = audit.length_findings(audit.length_stats([30, 40], block_size=128, batching="packed"))
    assert [f.severity for f in findings] == ["error"]


# ----------------------------------------------------------------------------- leakage


def test_validation_copies_of_training_documents_are_leakage():
    validation = VALIDATION + [TRAIN[3], TRAIN[4].lower()]
    stats = audit.leakage_stats(TRAIN, validation)
    assert stats["exact_overlap_rate"] == pytest.approx(2 / 10)
    assert stats["examples"][:2] == [TRAIN[3], TRAIN[4].lower()]
    assert [f.severity for f in audit.leakage_findings(stats)] == ["error"]


def test_ngram_overlap_counts_validation_eight_grams_seen_in_training():
    # Validation has 3 eight-grams; only "a b c d e f g h" occurs in training.
    stats = audit.leakage_stats(["a b c d e f g h i j"], ["a b c d e f g h x y"])
    assert stats["exact_overlap_rate"] == 0
    assert stats["ngram_overlap_rate"] == pytest.approx(1 / 3)
    assert [f.severity for f in audit.leakage_findings(stats)] == ["error"]


def test_separate_validation_documents_do_not_leak():
    stats = audit.leakage_stats(TRAIN, VALIDATION)
    assert (stats["exact_overlap_rate"], stats["ngram_overlap_rate"]) == (0, 0)
    assert audit.leakage_findings(stats) == []


# ----------------------------------------------------------------------------- domain fit


def test_tokenizer_far_from_the_text_is_a_warning(tokenize):
    by_character = audit.fertility_stats(TRAIN, lambda texts: [list(t) for t in texts])
    assert by_character["tokens_per_word"] > 5
    findings = audit.fertility_findings(by_character, block_size=128)
    assert [f.severity for f in findings] == ["warning"]
    # Keep the words per row: 128 x tokens_per_word / 1.3, capped at 1,024 positions.
    assert "--config.data.block_size=" in findings[0].fix

    fitting = audit.fertility_stats(TRAIN, tokenize)
    assert 1.0 <= fitting["tokens_per_word"] < 1.3
    assert [f.severity for f in audit.fertility_findings(fitting, block_size=128)] == ["info"]


def test_small_vocabulary_fertility_is_not_a_domain_warning(tokenize):
    """A 2,048-token BPE cuts even its own training text finely: no GPT-2 reference applies."""
    by_character = audit.fertility_stats(TRAIN, lambda texts: [list(t) for t in texts])
    findings = audit.fertility_findings(by_character, block_size=128, vocab_size=2048)
    assert [f.severity for f in findings] == ["info"] and "not compared" in findings[0].figure
    greek = audit.fertility_stats(["Η γάτα κοιμάται στο κουτί."], tokenize)
    assert [f.severity for f in audit.fertility_findings(greek, 128, vocab_size=2048)] == ["warning"]


def test_foreign_script_is_rare_characters(tokenize):
    greek = ["Η γάτα κοιμάται στο κουτί.", "Ο ποταμός πλημμύρισε τη νύχτα."]
    stats = audit.fertility_stats(greek, tokenize)
    # 21 + 25 Greek letters of 26 + 30 characters (the rest are spaces and full stops).
    assert stats["rare_char_share"] == pytest.approx(46 / 56)
    assert [f.severity for f in audit.fertility_findings(stats, block_size=128)] == ["warning"]


# ----------------------------------------------------------------------------- add_tokens hint

# Every word of the forty sentences is one token; any other word costs one token
# per three letters, as rare words do in a BPE: "acetylsalicylic" (15 letters) is 5.
KNOWN_WORDS = set(re.findall(r"[^\W\d_]+", " ".join(SENTENCES)))


def known_words_tokenize(texts):
    return [[piece for word in re.findall(r"[^\W\d_]+|\d|[^\w\s]", text)
             for piece in ([word] if word in KNOWN_WORDS else [word[i:i + 3] for i in range(0, len(word), 3)])]
            for text in texts]


def test_frequent_words_cut_into_many_pieces_are_add_tokens_candidates():
    lab = [f"{s} Add the acetylsalicylic acid to dimethylformamide." for s in SENTENCES]
    lab += [f"{s} Then add tetrahydrofuran." for s in SENTENCES[:19]]  # 19 < 20 occurrences: not a candidate
    calls = []

    def tokenize(texts):
        calls.append(list(texts))
        return known_words_tokenize(texts)

    stats = audit.fertility_stats(lab, tokenize)
    # Two calls: the sampled documents, then each distinct frequent form once, with its leading space.
    assert len(calls) == 2 and len(calls[1]) == len(set(calls[1])) and " acetylsalicylic" in calls[1]
    assert [(w["word"], w["count"], w["pieces"]) for w in stats["split_word_examples"]] == [
        ("dimethylformamide", 40, 6), ("acetylsalicylic", 40, 5)]  # most tokens saved first
    saved = 40 * 5 + 40 * 4
    assert stats["split_word_saving_share"] == pytest.approx(saved / sum(map(len, tokenize(lab))))
    findings = audit.fertility_findings(stats, block_size=128)
    hint = [f for f in findings if "split_words" in f.data]
    assert [f.severity for f in hint] == ["warning"]  # 560 of ~2,000 tokens saved: over 15%
    assert "--config.model.add_tokens=FILE" in hint[0].fix and "' dimethylformamide', ' acetylsalicylic'" in hint[0].fix
    assert hint[0].data["split_words"][0] == {"word": "dimethylformamide", "count": 40, "pieces": 6}
    # A small vocabulary cuts most words: the hint stays info and a larger vocabulary comes first.
    (small,) = [f for f in audit.fertility_findings(stats, 128, vocab_size=2048) if "split_words" in f.data]
    assert small.severity == "info" and small.fix.startswith("A 2,048-token vocabulary cuts most words")


def test_no_add_tokens_hint_on_plain_prose(tokenize):
    for tokenizer in (tokenize, known_words_tokenize):
        stats = audit.fertility_stats(PARAGRAPHS, tokenizer)
        assert stats["split_word_saving_share"] == 0
        assert [f.severity for f in audit.fertility_findings(stats, block_size=128)] == ["info"]
    # Without a tokenizer (token counts only) nothing is measured.
    stats = audit.fertility_stats(TRAIN, None, token_counts=[len(t) for t in known_words_tokenize(TRAIN)])
    assert stats["split_words"] == 0 and len(audit.fertility_findings(stats, block_size=128)) == 1


def test_add_tokens_hint_counts_line_starts_apart():
    """'Ethoxyquin' opening a line is tokenized without the space it has mid-sentence."""
    def tokenize(texts):  # ' Ethoxyquin' is 4 pieces, 'Ethoxyquin' 1
        return [[t] if t == "Ethoxyquin" else known_words_tokenize([t])[0] for t in texts]

    stats = audit.fertility_stats([f"Ethoxyquin {s}" for s in SENTENCES], tokenize)
    assert stats["split_words"] == 0
    stats = audit.fertility_stats([f"{s} Ethoxyquin" for s in SENTENCES], tokenize)
    assert [(w["word"], w["pieces"]) for w in stats["split_word_examples"]] == [("Ethoxyquin", 4)]


# ----------------------------------------------------------------------------- prompt/completion


def count_tokens(text: str) -> int:
    """Words and punctuation marks: close enough to GPT-2's counts on this English."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def pc_stats(pairs, block_size=64, **kwargs):
    return audit.prompt_completion_stats(pairs, [count_tokens(p) for p, _ in pairs],
                                         [count_tokens(c) + 1 for _, c in pairs], block_size, **kwargs)


def pc_issues(findings, severity=None):
    return [f.data["issue"] for f in findings if severity is None or f.severity == severity]


def question_answers(n: int = 120, seed: int = 0) -> list[tuple[str, str]]:
    """Extraction data: one-word answers after "Answer:" (what OpenAI's guide recommends)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        sentence = SENTENCES[i % len(SENTENCES)]
        words = sentence.rstrip(".").split()
        k = rng.randrange(len(words))
        pairs.append((f"Question: Which word is number {k + 1} in the sentence '{sentence}'?\nAnswer:",
                      " " + words[k]))
    return pairs


def continuations() -> list[tuple[str, str]]:
    """Generation data: the first half of a sentence, a newline, then the second half."""
    pairs = []
    for sentence in SENTENCES:
        words = sentence.split()
        half = len(words) // 2
        pairs.append((f"Continue the sentence: {' '.join(words[:half])}\n", " " + " ".join(words[half:])))
    return pairs


def test_clean_prompt_completion_data_gives_only_info():
    for pairs in (question_answers(), continuations()):
        findings = audit.prompt_completion_findings(pc_stats(pairs))
        assert pc_issues(findings) == ["supervised_share"], [f.figure for f in findings]
        assert all(f.check == "prompt_completion" and f.fix for f in findings)
    stats = pc_stats(question_answers())
    assert stats["ending"]["separator"] == ".'?\nAnswer:"  # every sentence ends with "." then the template
    assert pc_stats(continuations())["ending"]["separator"] == "\n"


def test_supervised_share_counts_what_the_model_reads():
    # 10 examples: prompt 12 tokens, completion 4 + EOS; at block_size 16 the prompt keeps 11.
    stats = audit.prompt_completion_stats([("p", "c")] * 10, [12] * 10, [5] * 10, block_size=16)
    assert stats["supervised_share"] == pytest.approx(5 / 16)
    assert stats["prompt_cut"] == 10 and stats["prompt_tokens_cut"] == 10 * 1
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "supervised_share"]
    assert finding.severity == "info" and "31.2%" in finding.figure
    assert "completions only" in finding.why


def test_long_completions_and_prompts_that_fill_the_block_are_errors():
    pairs = question_answers(100)
    pairs[0] = (pairs[0][0], " " + " ".join(["word"] * 70))  # completion + EOS = 71 > 64: cut at the right
    pairs[1] = ("Read this: " + " ".join(["word"] * 70) + "\nAnswer:", " word")  # prompt alone fills the block
    stats = pc_stats(pairs)
    assert (stats["completion_cut"], stats["prompt_fills_block"], stats["prompt_cut"]) == (1, 1, 0)
    findings = audit.prompt_completion_findings(stats)
    by_issue = {f.data["issue"]: f for f in findings}
    assert by_issue["completion_cut"].severity == "error"  # 1 of 100 = 1%
    assert by_issue["prompt_fills_block"].severity == "error"
    assert "1.0% (1 of 100)" in by_issue["completion_cut"].figure
    assert by_issue["completion_cut"].fix.startswith("--config.data.block_size=128 (fits 100% ")
    assert "END" in by_issue["prompt_fills_block"].fix
    assert by_issue["prompt_fills_block"].data["examples"][0].startswith("Read this: word")
    # One in 200 is a warning; and with the model's positions already at 64, no larger block is suggested.
    stats = pc_stats(pairs + question_answers(100, seed=1), n_positions=64)
    findings = {f.data["issue"]: f for f in audit.prompt_completion_findings(stats)}
    assert findings["completion_cut"].severity == "warning"
    assert "already the model's limit" in findings["completion_cut"].fix


def test_prompts_cut_from_the_left_are_info_then_a_warning():
    long_prompt = ("Read this: " + " ".join(["word"] * 50) + "\nAnswer:", " " + " ".join(["word"] * 20))
    few = question_answers(100)[:97] + [long_prompt] * 3  # 3%: info
    findings = audit.prompt_completion_findings(pc_stats(few))
    assert [f.severity for f in findings if f.data["issue"] == "prompt_cut"] == ["info"]
    many = question_answers(100)[:90] + [long_prompt] * 10  # 10%: warning, with a block that fits them
    stats = pc_stats(many)
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "prompt_cut"]
    assert finding.severity == "warning" and "10.0% (10 of 100)" in finding.figure
    assert "--config.data.block_size=128" in finding.fix
    # What the model reads of them: the 21 completion tokens and the prompt's last 43.
    assert stats["prompt_tokens_cut"] == 10 * (count_tokens(long_prompt[0]) - (64 - 21))


def test_prompts_without_a_common_separator_warn():
    # Bare sentences as prompts: the shared ending is a full stop, which text goes on after.
    bare = [(s, " yes") for s in SENTENCES]
    stats = pc_stats(bare)
    assert stats["ending"]["ending"] == "." and stats["ending"]["separator"] is None
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "separator"]
    assert finding.severity == "warning" and "'\\n\\n###\\n\\n'" in finding.fix
    # Two templates half and half: no ending reaches 90%.
    mixed = question_answers(60)[:30] + [(p.replace("\nAnswer:", " ->"), c) for p, c in question_answers(60)[30:]]
    stats = pc_stats(mixed)
    assert stats["ending"]["separator"] is None and stats["ending"]["ending_share"] == pytest.approx(0.5)
    assert pc_issues(audit.prompt_completion_findings(stats), "warning") == ["separator"]
    # The suggestion is one that no prompt contains.
    hashes = [(p + "\n\n###\n\n body.", c) for p, c in bare]
    assert pc_stats(hashes)["ending"]["suggested_separator"] == " ->"


def test_a_separator_ending_with_a_space_is_found_under_the_space():
    # 95 end with "Answer: ", 5 with "=> ": the space ends them all but is no separator.
    pairs = [(p + " ", c.lstrip()) for p, c in question_answers(95)]
    pairs += [(f"{s} => ", "no") for s in SENTENCES[:5]]
    stats = pc_stats(pairs)
    assert stats["ending"]["separator"] == ".'?\nAnswer: " and stats["ending"]["lacking"] == 5
    assert pc_issues(audit.prompt_completion_findings(stats), "warning") == []


def test_a_few_prompts_missing_the_separator_are_listed():
    pairs = question_answers(100)
    pairs[5] = (pairs[5][0].replace("\nAnswer:", ""), pairs[5][1])
    stats = pc_stats(pairs)
    assert stats["ending"]["separator"] == ".'?\nAnswer:" and stats["ending"]["lacking"] == 1
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "separator"]
    assert finding.severity == "info" and finding.data["examples"] == [pairs[5][0]]


def test_is_separator():
    assert all(audit.is_separator(e) for e in ("\nAnswer:", " ->", "\n\n###\n\n", "?", "\n", "Sentiment"))
    assert not any(audit.is_separator(e) for e in (".", " !", "d", "7", "  ", ""))


def test_completions_starting_with_and_without_a_space_warn_when_mixed():
    pairs = question_answers(100)
    for i in range(0, 100, 3):  # 34 of 100 lose their leading space
        pairs[i] = (pairs[i][0], pairs[i][1].lstrip())
    stats = pc_stats(pairs)
    assert stats["leading_space"] == 66
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "completion_start"]
    assert finding.severity == "warning" and "66.0% (66 of 100)" in finding.figure
    assert finding.data["examples"][0] == pairs[0][1]  # the minority: no space
    # Consistent either way: quiet.
    for consistent in (question_answers(100), [(p, c.lstrip()) for p, c in question_answers(100)]):
        assert "completion_start" not in pc_issues(audit.prompt_completion_findings(pc_stats(consistent)))


def test_same_prompt_with_different_completions():
    pairs = question_answers(100)
    pairs[1] = (pairs[0][0], " wrong")  # one prompt, two answers: 2 of 100 examples
    stats = pc_stats(pairs)
    assert (stats["conflicting_prompts"], stats["conflicting_examples"]) == (1, 2)
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "conflicting_completions"]
    assert finding.severity == "info"  # 2%: paraphrase-like tasks have several answers
    assert finding.data["examples"][0]["completions"] == [pairs[0][1].strip(), "wrong"]
    for i in range(2, 10, 2):  # 5 prompts, 10 of 100 examples
        pairs[i + 1] = (pairs[i][0], " other")
    findings = audit.prompt_completion_findings(pc_stats(pairs))
    assert [f.severity for f in findings if f.data["issue"] == "conflicting_completions"] == ["warning"]
    # The same answer twice (differing in spacing, case or final punctuation) is a duplicate, not a conflict.
    copies = question_answers(50) + [(p + " ", c.upper() + ".\n") for p, c in question_answers(50)]
    assert pc_stats(copies)["conflicting_prompts"] == 0


def test_empty_completions_warn_then_error():
    pairs = question_answers(100)
    pairs[3] = (pairs[3][0], "  ")
    stats = pc_stats(pairs)
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "empty_completions"]
    assert finding.severity == "warning" and finding.data["prompts"] == [pairs[3][0]]
    for i in range(0, 100, 10):
        pairs[i] = (pairs[i][0], "")
    findings = audit.prompt_completion_findings(pc_stats(pairs))
    assert [f.severity for f in findings if f.data["issue"] == "empty_completions"] == ["error"]  # 11%


def test_short_completions_are_outliers_only_against_long_ones():
    # Classification: every completion is one token. Nothing is short.
    labels = [(f"Review: {s}\nSentiment:", " positive" if i % 2 else " negative") for i, s in enumerate(SENTENCES)]
    stats = pc_stats(labels)
    assert stats["short_completions"] == 0
    assert pc_issues(audit.prompt_completion_findings(stats), "warning") == []
    # Generation with a median of 9 tokens: "N/A" (3 tokens) is not an outlier; "-" (1 token) is.
    pairs = [(f"Rewrite formally:\n{s}\n", " " + s) for s in SENTENCES]
    pairs[4] = (pairs[4][0], " N/A")
    pairs[7] = (pairs[7][0], " -")
    stats = pc_stats(pairs)
    assert stats["median_completion_tokens"] >= 8 and stats["short_limit"] == 1
    (finding,) = [f for f in audit.prompt_completion_findings(stats) if f.data["issue"] == "short_completions"]
    assert finding.severity == "warning" and finding.data["examples"] == [" -"]  # 1 of 40 = 2.5%


# ----------------------------------------------------------------------------- the whole audit


def test_clean_varied_corpus_raises_nothing(tokenize):
    findings, stats = audit.audit_corpus(TRAIN, VALIDATION, None, block_size=64, batching="packed",
                                         tokenize=tokenize)
    assert [f for f in findings if f.severity != "info"] == []
    assert {f.check for f in findings} == {"size", "length", "domain_fit"}
    assert stats["duplicates"]["near_duplicate_rate"] == 0
    assert stats["diversity"]["template_rate"] == 0
    assert stats["diversity"]["distinct_2"] > 0.9
    assert stats["leakage"]["ngram_overlap_rate"] == 0
    assert all(f.fix for f in findings)


def test_audit_reports_every_seeded_defect_most_severe_first(tokenize):
    train = TRAIN + TRAIN[:6] + orders(20)  # 6 copies (10.3%) and 19 templated (32.8%) of 58
    validation = VALIDATION + [TRAIN[10]]  # 1 of 9 validation docs seen in training
    lengths = [20] * 52 + [300] * 6  # padded at 128: 6 x 172 = 1,032 of 2,840 tokens cut
    findings, stats = audit.audit_corpus(train, validation, lengths, block_size=128, batching="padded",
                                         tokenize=tokenize)
    found = {(f.check, f.severity) for f in findings}
    assert {("duplicates", "error"), ("templates", "error"), ("length", "error"),
            ("leakage", "error")} <= found
    order = [audit.SEVERITIES.index(f.severity) for f in findings]
    assert order == sorted(order)
    assert all(f.figure and f.why and f.fix for f in findings)
    assert stats["length"]["truncated_tokens_share"] == pytest.approx(1_032 / 2_840)
    assert stats["duplicates"]["exact_duplicate_rate"] == pytest.approx(6 / 58)
    assert stats["diversity"]["template_rate"] == pytest.approx(19 / 58)
    assert stats["leakage"]["exact_overlap_rate"] == pytest.approx(1 / 9)


def test_normalization_is_suggested_on_messy_text_only():
    from tests.conftest import make_documents

    clean = make_documents(400)
    assert audit.normalization_findings(audit.normalization_stats(clean)) == []
    # Exported or scraped text: fullwidth letters and runs of tabs and spaces.
    messy = [f"Ｒｅｐｏｒｔ\t\t{d}   \u00a0" for d in clean]
    (finding,) = audit.normalization_findings(audit.normalization_stats(messy))
    assert finding.check == "normalization" and finding.severity == "warning"
    assert finding.fix.startswith("--config.data.normalize=nfkc,whitespace ")
    assert set(finding.data) == {"nfkc", "whitespace"} and finding.data["nfkc"] >= audit.NORMALIZE_WARNING
    # Code: indentation is content, kept by the step and never counted (no false alarm).
    code = [f"def f{i}(x):\n    if x:\n\t\treturn x  # note\n    return {i}\n" for i in range(300)]
    stats = audit.normalization_stats(code)
    assert stats["changed_share"]["whitespace"] < 0.02 and audit.normalization_findings(stats) == []
    # Already normalised: nothing left to suggest.
    stats = audit.normalization_stats(messy, applied=("nfkc", "whitespace"))
    assert set(stats["changed_share"]) == {"control"} and audit.normalization_findings(stats) == []
