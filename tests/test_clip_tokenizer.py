"""t2i's CLIP tokenizer gives the ids that transformers' CLIPTokenizer gives, from the same files."""

import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from t2i.encoders.clip_tokenizer import CLIPTokenizer  # noqa: E402

CORPUS = ["a red circle to the left of a blue square", "two green triangles", "a large yellow star",
          "a purple cross above an orange circle on a black background", "Three small pink squares!",
          "it's a brown_triangle, isn't it?", "4 circles and 12 stars"] * 20

PROMPTS = ["a red circle to the left of a blue square", "  Two GREEN   triangles ", "a zebra (unknown words) ...",
           "it's 42 stars_and_crosses!!", "naïve café", "", "word " * 100]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_clip_bpe):
    return tiny_clip_bpe(tmp_path_factory.mktemp("tok"), CORPUS, max_length=16)


def test_ids_match_transformers(folder):
    theirs = transformers.CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    ours = CLIPTokenizer.from_folder(folder)
    assert ours.max_length == 16
    ids = ours(PROMPTS)
    expected = theirs(PROMPTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == expected.tolist()
    assert len(set(ids[0].tolist())) > 5  # real merges happened, not byte-per-token


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
