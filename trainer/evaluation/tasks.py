"""Task evaluation of prompt/completion data: the held-out prompts completed greedily at
each evaluation, their length bounds, and report.json's summary of the scores."""

import dataclasses

from trainer import settings
from trainer.model import sampler


def default_prompts(documents: list[str], n: int, words: int = 4) -> list[str]:
    """The first few words of the first n validation documents."""
    return [" ".join(d.split()[:words]) for d in documents[:n] if d.split()]


# A completion longer than this is cut when eval.task_max_new_tokens is unset: one
# evaluation of 64 prompts then costs at most 2 chunks x 256 decoding steps.
TASK_MAX_NEW_TOKENS = 256


@dataclasses.dataclass
class TaskEvaluation:
    """The held-out prompts scored at each evaluation, and the length bounds of their completions."""
    examples: list  # (prompt, reference completion) pairs; empty for free text or eval.task_examples=0
    max_new_tokens: int = 0
    max_prompt_tokens: int = 0

    @classmethod
    def of(cls, config, pairs, tokenizer, n_positions: int) -> "TaskEvaluation":
        """Bounds fixed for the run: new tokens = eval.task_max_new_tokens, or the longest
        reference completion + EOS (at most 256); the prompt keeps its last
        min(block_size, n_positions) - new tokens (at least 1), as training cut it."""
        examples = list(pairs[:config.eval.task_examples]) if pairs else []
        if not examples:
            return cls([])
        new = config.eval.task_max_new_tokens
        if new is None:
            lengths = [len(ids) + 1 for ids in tokenizer([c for _, c in examples], add_special_tokens=False,
                                                          verbose=False)["input_ids"]]
            new = min(max(lengths), TASK_MAX_NEW_TOKENS)
        window = min(config.data.block_size, n_positions)
        new = max(1, min(new, window - 1))
        return cls(examples, new, max(1, window - new))

    @property
    def references(self) -> list[str]:
        return [c for _, c in self.examples]

    def complete(self, model, tokenizer, should_stop=None) -> list[str] | None:
        """Greedy completions of the examples' prompts; None once should_stop says yes."""
        return sampler.complete(model, tokenizer, [p for p, _ in self.examples], self.max_new_tokens,
                                self.max_prompt_tokens, should_stop)

    def summary(self, validation_points: list[dict], best_step: int, select_by: str) -> dict:
        """report.json's task_metrics: the base model's scores (step 0), the exported model's
        (the best step) and the best each metric reached, with its step."""
        def at(step):
            point = next((p for p in validation_points if p["step"] == step), None)
            return {k: point[f"task/{k}"] for k in settings.TASK_METRICS if point and f"task/{k}" in point}

        scored = [p for p in validation_points if f"task/{settings.TASK_METRICS[0]}" in p]
        best_each = {k: max(scored, key=lambda p: p[f"task/{k}"]) for k in settings.TASK_METRICS} if scored else {}
        return {"examples": len(self.examples), "max_new_tokens": self.max_new_tokens, "select_best_by": select_by,
                "initial": at(0), "exported": at(best_step),
                "best": {k: {"value": p[f"task/{k}"], "step": p["step"]} for k, p in best_each.items()}}
