"""Per-call latency of the blog's functions at blog size (one sentence, 3-d
embeddings), against the blog's own NumPy code.

    asv run --python=same --quick -b bench_blog
    asv continuous -b bench_blog main HEAD
"""
import numpy as np

from fastattn import blog, numpy_reference
from fastattn.demo import SENTENCES

from .common import Benchmark


class BlogFunctions(Benchmark):
    params = [["fastattn", "blog_numpy"]]
    param_names = ["implementation"]

    def setup(self, implementation):
        self.word_to_index, self.index_to_word, self.embeddings = \
            blog.create_word_representations(SENTENCES, seed=0)
        self.words = SENTENCES[0].split()
        self.source = blog if implementation == "fastattn" else _BlogNumpy

    def time_calculate_attention_weights(self, implementation):
        self.source.calculate_attention_weights("to", self.words, self.embeddings,
                                                self.word_to_index)

    def time_predict_next_word_with_attention(self, implementation):
        self.source.predict_next_word_with_attention("to", self.words, self.embeddings,
                                                     self.word_to_index)

    def time_calculate_self_attention(self, implementation):
        vectors = self.embeddings[:9]
        if implementation == "fastattn":
            blog.calculate_self_attention(vectors[0], vectors, vectors)
        else:
            scores = vectors[0] @ vectors.T / np.sqrt(vectors.shape[1])
            weights = np.exp(scores) / np.exp(scores).sum()
            weights @ vectors


class _BlogNumpy:
    calculate_attention_weights = staticmethod(numpy_reference.blog_calculate_attention_weights)
    predict_next_word_with_attention = staticmethod(
        numpy_reference.blog_predict_next_word_with_attention)
