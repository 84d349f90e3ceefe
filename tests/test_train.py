"""fastattn.train: the blog's model, trained: its data, its gradients, its Adam, and that
it learns every next word of the six sentences."""
import math

import numpy as np
import pytest

from fastattn import train
from fastattn.demo import SENTENCES


@pytest.fixture(scope="module")
def corpus():
    return train.Corpus(SENTENCES)


def test_corpus_is_split_as_the_blog_splits(corpus):
    assert corpus.vocabulary_size == 30             # "dog." keeps its stop, "The" != "the"
    assert {"dog.", "The", "the"} <= set(corpus.word_to_index)
    assert corpus.inputs.shape == corpus.targets.shape == (6, 8)
    assert corpus.scored == sum(len(s.split()) - 1 for s in SENTENCES) == 29
    words = [corpus.index_to_word[i] for i in corpus.inputs[2, :4]]
    assert words == ["I", "love", "to", "eat"]
    assert [corpus.index_to_word[i] for i in corpus.targets[2, :4]] == ["love", "to", "eat",
                                                                        "pizza."]
    assert (corpus.targets[2, 4:] == -1).all()       # padding: nothing to predict


def test_ambiguous_prefixes_and_the_lowest_loss(corpus):
    ambiguous = corpus.ambiguous_prefixes()
    assert {prefix: set(after) for prefix, after in ambiguous.items()} == {
        ("The",): {"quick", "cat", "sun"}, ("I",): {"love", "am"}}
    assert corpus.lowest_loss() == pytest.approx((3 * math.log(3) + 2 * math.log(2)) / 29)


def test_correct_means_the_word_follows_that_prefix_somewhere(corpus):
    targets = np.where(corpus.targets >= 0, corpus.targets, 0)
    assert corpus.correct(targets).sum() == 29
    index = corpus.word_to_index
    predictions = targets.copy()
    predictions[0, 0] = index["cat"]               # after "The": sentence 4 goes on so
    predictions[5, 0] = index["love"]              # after "I": sentence 3 goes on so
    assert corpus.correct(predictions).sum() == 29
    predictions[0, 0] = index["dog."]              # follows no sentence's "The"
    predictions[0, 6] = index["seashore."]         # follows "the", but not "... over the"
    correct = corpus.correct(predictions)
    assert correct.sum() == 27 and not correct[0, 0] and not correct[0, 6]


def test_padding_changes_nothing(corpus):
    params = train.init_parameters(corpus.vocabulary_size, 8, 4, seed=1)
    batch, _ = train.forward(params, corpus.inputs)
    alone, _ = train.forward(params, corpus.inputs[2:3, :4])          # "I love to eat"
    np.testing.assert_allclose(batch[2:3, :4], alone, rtol=1e-12, atol=1e-12)


def test_gradients_match_central_differences():
    """Every parameter's gradient, on a tiny instance: 5 words, dim 3, 4 positions,
    a word repeated in a sentence, a padded sentence."""
    params = train.init_parameters(5, 4, 3, seed=2)
    params["output_bias"] = np.random.default_rng(3).standard_normal(5)
    inputs = np.array([[0, 3, 0, 2], [4, 1, 0, 0]])
    targets = np.array([[3, 0, 2, 1], [1, 4, -1, -1]])
    loss, grads, _ = train.loss_and_gradients(params, inputs, targets)
    assert loss == pytest.approx(train.cross_entropy(train.forward(params, inputs)[0], targets))
    assert set(grads) == set(params)
    step = 1e-6
    for name, p in params.items():
        numeric = np.empty_like(p)
        for i in np.ndindex(p.shape):
            kept = p[i]
            p[i] = kept + step
            above = train.cross_entropy(train.forward(params, inputs)[0], targets)
            p[i] = kept - step
            below = train.cross_entropy(train.forward(params, inputs)[0], targets)
            p[i] = kept
            numeric[i] = (above - below) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


def test_adam():
    # the first step moves every parameter by learning_rate against its gradient's sign
    params = {"w": np.array([1.0, -2.0, 3.0])}
    adam = train.Adam(params, learning_rate=0.1)
    adam.step(params, {"w": np.array([0.5, -4.0, 1e-3])})
    np.testing.assert_allclose(params["w"], [0.9, -1.9, 2.9], rtol=1e-6)
    # and it finds the minimum of a quadratic
    target = np.array([0.5, -1.5, 2.0])
    for _ in range(2000):
        adam.step(params, {"w": 2 * (params["w"] - target)})
    np.testing.assert_allclose(params["w"], target, atol=1e-3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_predicts_every_next_word(seed):
    logged = []
    trained = train.train(SENTENCES, seed=seed, log=lambda *args: logged.append(args))
    assert trained.accuracy() == 1
    assert trained.solved_at is not None and trained.accuracies[-1] == 1
    assert trained.losses[-1] < trained.corpus.lowest_loss() + 0.005 < trained.losses[0]
    assert [step for step, *_ in logged] == list(range(0, 201, 20))
    assert logged[-1][2:] == (29, 29)
