import pytest

from attention_backends.synthetic_doc import generate_document


def _words(text: str) -> int:
    return len(text.split())


def test_document_is_deterministic_and_reaches_the_length():
    a = generate_document(3000, _words, seed=7)
    b = generate_document(3000, _words, seed=7)
    assert a == b
    assert _words(a.body + a.question) >= 3000 * 0.9
    assert a != generate_document(3000, _words, seed=8)


def test_facts_repeat_and_the_question_asks_one_of_them():
    doc = generate_document(2000, _words, seed=1, num_facts=4, repeats=3)
    assert len(doc.facts) == 4
    for place, code in doc.facts.items():
        assert doc.body.count(f"the access code for {place} is {code}") == 3
    asked = next(p for p in doc.facts if p in doc.question)
    assert doc.answer == doc.facts[asked]
    assert doc.question.rstrip().endswith("is")


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        generate_document(10, _words)
    with pytest.raises(ValueError, match="positive"):
        generate_document(100, _words, repeats=0)
