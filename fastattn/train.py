"""The blog's next-word model, trained (``python -m fastattn demo --train``).

Seed 001 predicts the next word from random embeddings that never change, and
says what a real model does instead: "the word embeddings would be learned
from data", "updated through backpropagation". This module does that, on the
blog's six sentences, split into words as the blog splits them ("dog." keeps
its full stop, "The" and "the" are two words). Each word of a sentence but the
last predicts the word after it::

    h = word_embeddings[words] + position_embeddings[:n]     (n, dim)
    q, k, v = h @ query, h @ key, h @ value                  (n, dim) each
    a = softmax(q k^T / sqrt(dim), causal) @ v               fastattn, forward and backward
    logits = (h + a) @ output + output_bias                  (n, vocabulary)

One causal self-attention layer, as in the blog, with what lets it learn the
sentences: learned position embeddings (attention alone sees a set of words,
not their order), and a residual connection (``h + a``) so that the word just
read reaches the output whatever the attention looks at. The earlier words come
in through the attention: after "the", the next word is "lazy", "seashore." or
"mouse." depending on them. (``predict(..., attention=False)`` takes the
attention's output away from a trained model, to count what it owes to it.)

The six sentences are one batch of shape (6, n, dim), right-padded to the
longest: under a causal mask no real word attends to a later position, and the
padding has no target, so it changes nothing. The gradients are written out by
hand (the chain rule, layer by layer: ``loss_and_gradients``), the attention's
from ``fastattn.scaled_dot_product_attention_backward``; ``Adam`` updates the
parameters. Everything is float64 and seeded.

What counts as correct. "The" starts three sentences and "I" two: after the
one-word prefix "The" the corpus goes on with "quick", "cat" and "sun", and no
model can know which. A prediction counts as correct when the predicted word
follows that same prefix somewhere in the corpus (``next_words``); for every
other prefix that is the one word that follows it. The cross-entropy cannot
reach 0 either: its floor (``lowest_loss``) is the entropy of those choices.
"""
import dataclasses
import math
import time
from collections import Counter

import numpy as np

import fastattn
from fastattn import blog

__all__ = ["Corpus", "init_parameters", "forward", "cross_entropy", "loss_and_gradients",
           "Adam", "predict", "Trained", "train"]

# the defaults of ``train``: every seed tried (0 to 19) has all 29 next words
# right by step 15, and the loss within 0.001 of its floor by step 200
DIM, STEPS, LEARNING_RATE = 16, 200, 0.02


class Corpus:
    """The sentences as word indices, split as the blog splits them: ``inputs``
    (B, n) every word of each sentence but its last, ``targets`` (B, n) the word
    after each; a shorter sentence is padded with word 0 and target -1 (no word
    to predict)."""

    def __init__(self, sentences):
        self.sentences = [sentence.split() for sentence in sentences]
        self.word_to_index, self.index_to_word, _ = blog.create_word_representations(sentences)
        self.vocabulary_size = len(self.word_to_index)
        longest = max(len(words) for words in self.sentences) - 1
        self.inputs = np.zeros((len(sentences), longest), dtype=np.intp)
        self.targets = np.full((len(sentences), longest), -1, dtype=np.intp)
        for row, words in enumerate(self.sentences):
            indices = [self.word_to_index[word] for word in words]
            self.inputs[row, :len(words) - 1] = indices[:-1]
            self.targets[row, :len(words) - 1] = indices[1:]
        self.scored = int((self.targets >= 0).sum())        # next words to predict
        # prefix (a tuple of words) -> Counter of the words that follow it in the corpus
        self.next_words = {}
        for words in self.sentences:
            for end in range(1, len(words)):
                self.next_words.setdefault(tuple(words[:end]), Counter())[words[end]] += 1

    def ambiguous_prefixes(self):
        """{prefix: Counter of the words that follow it} for the prefixes followed by
        more than one word."""
        return {prefix: after for prefix, after in self.next_words.items() if len(after) > 1}

    def lowest_loss(self):
        """The mean cross-entropy of a model that knows the corpus: where a prefix is
        followed by several words, the best it can do is their frequencies."""
        entropy = sum(-count * math.log(count / sum(after.values()))
                      for after in self.next_words.values() for count in after.values())
        return entropy / self.scored

    def correct(self, predictions):
        """(B, n) bool: the predicted word follows that prefix somewhere in the corpus
        (False where there is no target)."""
        result = np.zeros(self.targets.shape, dtype=bool)
        for row, words in enumerate(self.sentences):
            for position in range(len(words) - 1):
                predicted = self.index_to_word[int(predictions[row, position])]
                result[row, position] = predicted in self.next_words[tuple(words[:position + 1])]
        return result


def init_parameters(vocabulary_size, length, dim, seed=None):
    """Random starting parameters: normal, with a standard deviation of
    1/sqrt(fan-in) for the projections, 0 for the output bias."""
    rng = np.random.default_rng(seed)

    def normal(*shape, fan_in=1):
        return rng.standard_normal(shape) / math.sqrt(fan_in)

    return {
        "word_embeddings": normal(vocabulary_size, dim),
        "position_embeddings": normal(length, dim),
        "query": normal(dim, dim, fan_in=dim),
        "key": normal(dim, dim, fan_in=dim),
        "value": normal(dim, dim, fan_in=dim),
        "output": normal(dim, vocabulary_size, fan_in=dim),
        "output_bias": np.zeros(vocabulary_size),
    }


def forward(params, inputs, with_weights=False):
    """Logits (B, n, vocabulary) for word indices ``inputs`` (B, n), and what
    ``loss_and_gradients`` needs (with ``with_weights``, the attention weights too)."""
    n = inputs.shape[-1]
    h = params["word_embeddings"][inputs] + params["position_embeddings"][:n]
    q, k, v = h @ params["query"], h @ params["key"], h @ params["value"]
    # six sentences of at most eight words: too small to share among threads
    weights = None
    if with_weights:
        a, weights, lse = fastattn.scaled_dot_product_attention_with_weights(
            q, k, v, is_causal=True, return_lse=True, num_threads=1)
    else:
        a, lse = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                       return_lse=True, num_threads=1)
    r = h + a                                   # the residual connection
    logits = r @ params["output"] + params["output_bias"]
    saved = {"inputs": inputs, "h": h, "q": q, "k": k, "v": v, "a": a, "lse": lse, "r": r,
             "weights": weights}
    return logits, saved


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits, targets):
    """The mean of -log p(target) over the positions with a target (``targets >= 0``)."""
    scored = targets >= 0
    return float(-np.log(_softmax(logits)[scored, targets[scored]]).mean())


def loss_and_gradients(params, inputs, targets):
    """(``cross_entropy`` of the model's logits, {name: gradient of it} for every
    parameter, the logits), by the chain rule from the loss back to the embeddings."""
    logits, saved = forward(params, inputs)
    loss = cross_entropy(logits, targets)
    scored = targets >= 0
    probabilities = _softmax(logits)

    # through softmax and cross-entropy: d loss / d logits = (p - one_hot(target)) / count
    d_logits = probabilities
    d_logits[scored, targets[scored]] -= 1
    d_logits *= scored[..., None] / scored.sum()

    grads = {}
    h, r = saved["h"], saved["r"]
    grads["output"] = np.einsum("bnd,bnv->dv", r, d_logits)
    grads["output_bias"] = d_logits.sum(axis=(0, 1))
    d_r = d_logits @ params["output"].T
    # r = h + a: d_r flows into the attention and, past it, straight into h
    d_q, d_k, d_v = fastattn.scaled_dot_product_attention_backward(
        d_r, saved["q"], saved["k"], saved["v"], saved["a"], saved["lse"], is_causal=True,
        num_threads=1)
    d_h = d_r + d_q @ params["query"].T + d_k @ params["key"].T + d_v @ params["value"].T
    for name, d in (("query", d_q), ("key", d_k), ("value", d_v)):
        grads[name] = np.einsum("bnd,bne->de", h, d)
    grads["position_embeddings"] = np.zeros_like(params["position_embeddings"])
    grads["position_embeddings"][:h.shape[1]] = d_h.sum(axis=0)
    grads["word_embeddings"] = np.zeros_like(params["word_embeddings"])
    np.add.at(grads["word_embeddings"], saved["inputs"], d_h)   # summed over repeated words
    return loss, grads, logits


class Adam:
    """Adam (Kingma and Ba, 2015): per parameter, running means of the gradient
    (m) and of its square (v), corrected for their start at zero; each step moves
    a parameter by ``learning_rate * m / (sqrt(v) + eps)``."""

    def __init__(self, params, learning_rate=0.02, beta1=0.9, beta2=0.999, eps=1e-8):
        self.learning_rate, self.beta1, self.beta2, self.eps = learning_rate, beta1, beta2, eps
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}
        self.steps = 0

    def step(self, params, grads):
        """Update ``params`` in place."""
        self.steps += 1
        for name, g in grads.items():
            self.m[name] = self.beta1 * self.m[name] + (1 - self.beta1) * g
            self.v[name] = self.beta2 * self.v[name] + (1 - self.beta2) * g * g
            m = self.m[name] / (1 - self.beta1 ** self.steps)
            v = self.v[name] / (1 - self.beta2 ** self.steps)
            params[name] -= self.learning_rate * m / (np.sqrt(v) + self.eps)


def predict(params, inputs, attention=True):
    """(predicted word indices (B, n), attention weights (B, n, n)). With
    ``attention=False`` the predictions are made with the attention's output
    taken out (``h`` alone reaches the output): what the model owes to it."""
    logits, saved = forward(params, inputs, with_weights=True)
    if not attention:
        logits = saved["h"] @ params["output"] + params["output_bias"]
    return logits.argmax(axis=-1), saved["weights"]


@dataclasses.dataclass
class Trained:
    """What ``train`` returns."""
    params: dict
    corpus: Corpus
    losses: list          # the loss before each step (and after the last)
    accuracies: list      # the fraction of next words right, likewise
    solved_at: int        # the first step at 100% (None: never)
    seconds: float

    def accuracy(self, attention=True):
        predicted, _ = predict(self.params, self.corpus.inputs, attention)
        return self.corpus.correct(predicted).sum() / self.corpus.scored


def train(sentences, steps=STEPS, dim=DIM, learning_rate=LEARNING_RATE, seed=0, log=None,
          log_every=20):
    """Train the model on ``sentences`` with ``steps`` Adam steps from parameters
    seeded by ``seed``; ``log(step, loss, correct, total)`` every ``log_every``
    steps and at the end. Returns a ``Trained``."""
    corpus = Corpus(sentences)
    params = init_parameters(corpus.vocabulary_size, corpus.inputs.shape[1], dim, seed)
    optimizer = Adam(params, learning_rate)
    losses, accuracies, solved_at = [], [], None
    start = time.perf_counter()
    for step in range(steps + 1):
        loss, grads, logits = loss_and_gradients(params, corpus.inputs, corpus.targets)
        correct = int(corpus.correct(logits.argmax(axis=-1)).sum())
        losses.append(loss)
        accuracies.append(correct / corpus.scored)
        if correct == corpus.scored and solved_at is None:
            solved_at = step
        if log is not None and (step % log_every == 0 or step == steps):
            log(step, loss, correct, corpus.scored)
        if step < steps:
            optimizer.step(params, grads)
    return Trained(params, corpus, losses, accuracies, solved_at, time.perf_counter() - start)
