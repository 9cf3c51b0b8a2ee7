import pytest

pytest.importorskip("tokenizers")

from cluster.workload.tokens import count_tokens, tokenizer_path  # noqa: E402


def test_counts_without_special_tokens_or_truncation():
    assert count_tokens(["Hello world", "", "HELLO WORLD"]) == [2, 0, 2]  # uncased
    long_text = "scheduling " * 5000
    assert count_tokens([long_text]) == [5000]  # the shipped file truncates at 128; we do not
    assert tokenizer_path().name == "tokenizer.json"


def test_batches_match_single_calls():
    texts = [f"request number {i} " * (i % 7) for i in range(2500)]  # more than one batch
    assert count_tokens(texts) == [count_tokens([t])[0] for t in texts]
