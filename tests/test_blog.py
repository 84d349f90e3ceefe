"""fastattn.blog against an independent NumPy transcription of the blog's code."""
import numpy as np
import pytest

from fastattn import blog
from fastattn.demo import SENTENCES     # the blog's six sentences



# --- the blog's code (seed 001), transcribed with its globals made arguments ---
def blog_calculate_attention_weights(current_word, words, word_embeddings, word_to_index):
    attention_scores = np.dot(word_embeddings[word_to_index[current_word]],
                              np.array([word_embeddings[word_to_index[w]] for w in words]).T)
    return np.exp(attention_scores) / np.sum(np.exp(attention_scores))


def blog_predict_next_word_with_attention(current_word, words, word_embeddings, word_to_index):
    attention_weights = blog_calculate_attention_weights(current_word, words, word_embeddings,
                                                         word_to_index)
    weighted_words = np.array([word_embeddings[word_to_index[w]] for w in words]) \
        * attention_weights[:, None]
    weighted_sum = np.sum(weighted_words, axis=0)
    closest_index = np.argmin(np.linalg.norm(word_embeddings - weighted_sum, axis=1))
    return list(word_to_index.keys())[closest_index], attention_weights


def blog_calculate_self_attention(query, key, value):
    scores = np.dot(query, key.T) / np.sqrt(query.shape[-1])
    weights = np.exp(scores) / np.sum(np.exp(scores), axis=-1, keepdims=True)
    return weights, np.dot(weights, value)


def blog_predict_next_word_with_self_attention(current_word, words, word_embeddings,
                                               word_to_index, index_to_word):
    query = word_embeddings[word_to_index[current_word]]
    key = np.array([word_embeddings[word_to_index[w]] for w in words])
    weights, output = blog_calculate_self_attention(query, key, key)
    closest_index = np.argmin(np.linalg.norm(word_embeddings - output, axis=1))
    return index_to_word[closest_index], weights
# --- end of the transcription ---


@pytest.fixture(params=[0, 1, 7])
def vocabulary(request):
    return blog.create_word_representations(SENTENCES, seed=request.param)


def test_create_word_representations_follows_the_blog():
    word_to_index, index_to_word, embeddings = blog.create_word_representations(SENTENCES, seed=3)
    words = [w for s in SENTENCES for w in s.split()]
    assert list(word_to_index) == list(dict.fromkeys(words))       # first appearance
    assert "dog." in word_to_index and "The" in word_to_index and "the" in word_to_index
    assert all(index_to_word[i] == w for w, i in word_to_index.items())
    assert embeddings.shape == (len(word_to_index), 3)
    assert ((embeddings >= 0) & (embeddings < 1)).all()
    again = blog.create_word_representations(SENTENCES, seed=3)[2]
    np.testing.assert_array_equal(embeddings, again)
    assert blog.create_word_representations(SENTENCES, dim=8)[2].shape[1] == 8


@pytest.mark.parametrize("current_word", ["to", "fox", "The"])
def test_attention_functions_match_the_blog(vocabulary, current_word):
    word_to_index, index_to_word, embeddings = vocabulary
    for sentence in SENTENCES:
        words = sentence.split()
        np.testing.assert_allclose(
            blog.calculate_attention_weights(current_word, words, embeddings, word_to_index),
            blog_calculate_attention_weights(current_word, words, embeddings, word_to_index),
            rtol=1e-12, atol=1e-12)
        ours = blog.predict_next_word_with_attention(current_word, words, embeddings,
                                                     word_to_index)
        theirs = blog_predict_next_word_with_attention(current_word, words, embeddings,
                                                       word_to_index)
        assert ours[0] == theirs[0]
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-12)
        ours = blog.predict_next_word_with_self_attention(current_word, words, embeddings,
                                                          word_to_index, index_to_word)
        theirs = blog_predict_next_word_with_self_attention(current_word, words, embeddings,
                                                            word_to_index, index_to_word)
        assert ours[0] == theirs[0]
        np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (4, 3)])
def test_calculate_self_attention_matches_the_blog(rng, shape):
    query = rng.random(shape)
    key = rng.random((6, 3))
    value = rng.random((6, 5))
    weights, output = blog.calculate_self_attention(query, key, value)
    expected_weights, expected_output = blog_calculate_self_attention(query, key, value)
    assert weights.shape == expected_weights.shape and output.shape == expected_output.shape
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(output, expected_output, rtol=1e-12, atol=1e-12)


def test_large_embeddings_do_not_overflow():
    word_to_index, _, embeddings = blog.create_word_representations(SENTENCES, seed=0)
    embeddings = embeddings * 100.0                 # scores ~1e4: np.exp overflows
    words = SENTENCES[0].split()
    with np.errstate(over="ignore", invalid="ignore"):
        naive = blog_calculate_attention_weights("fox", words, embeddings, word_to_index)
    assert not np.isfinite(naive).all()
    weights = blog.calculate_attention_weights("fox", words, embeddings, word_to_index)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights.sum(), 1.0)


def test_unknown_words_and_empty_sentences():
    word_to_index, index_to_word, embeddings = blog.create_word_representations(SENTENCES)
    with pytest.raises(KeyError, match="'unicorn' is not in the vocabulary"):
        blog.calculate_attention_weights("unicorn", ["The"], embeddings, word_to_index)
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        blog.predict_next_word_with_attention("to", ["The", "zebra"], embeddings, word_to_index)
    with pytest.raises(ValueError, match="words must not be empty"):
        blog.predict_next_word_with_self_attention("to", [], embeddings, word_to_index,
                                                   index_to_word)
    with pytest.raises(ValueError, match="do not agree"):
        blog.calculate_self_attention(np.ones(3), np.ones((4, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        blog.create_word_representations(SENTENCES, dim=0)
    with pytest.raises(TypeError, match="a list of strings"):
        blog.create_word_representations("The cat")
