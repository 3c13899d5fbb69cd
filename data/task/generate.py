"""Writes data/task/{train,validation}.jsonl: the embedded prompt/completion sample.

    python data/task/generate.py

Two small tasks a tiny GPT-2 built from scratch can learn in minutes on a CPU, so
`configs/task.py` shows task metrics moving (exact match, token F1, BLEU,
ROUGE-L) without a model hub:
  - numbers to words:  "Number: 347\\nIn words:"      -> " three hundred forty-seven"
  - dates written out: "Date: 2024-03-17\\nWritten out:" -> " March 17, 2024"
Each prompt ends with a fixed separator line ("In words:" / "Written out:") and
each completion starts with a space, as the doctor recommends. Seeded: the
files are the same on every machine; the validation numbers and dates never
occur in training.
"""

import json
import os
import random

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def number_words(n: int) -> str:
    """0 <= n < 1,000,000, American style without "and": 1,204 -> one thousand two hundred four."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("-" + ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    return number_words(n // 1000) + " thousand" + (" " + number_words(n % 1000) if n % 1000 else "")


def examples(rng: random.Random, count: int, seen: set) -> list[dict]:
    out = []
    while len(out) < count:
        if rng.random() < 0.6:
            # Mostly below 1,000 (the patterns), some thousands (their composition).
            n = rng.randrange(1000) if rng.random() < 0.7 else rng.randrange(1000, 100_000)
            key = ("n", n)
            record = {"prompt": f"Number: {n}\nIn words:", "completion": " " + number_words(n)}
        else:
            year, month, day = rng.randrange(1950, 2050), rng.randrange(1, 13), rng.randrange(1, 29)
            key = ("d", year, month, day)
            record = {"prompt": f"Date: {year}-{month:02d}-{day:02d}\nWritten out:",
                      "completion": f" {MONTHS[month - 1]} {day}, {year}"}
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def main():
    rng = random.Random(2026)
    seen = set()
    folder = os.path.dirname(os.path.abspath(__file__))
    for name, count in (("train", 3000), ("validation", 200)):
        with open(os.path.join(folder, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            for record in examples(rng, count, seen):
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
