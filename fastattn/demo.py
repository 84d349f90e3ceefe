"""``python -m fastattn demo``: the blog's example, end to end, on fastattn.

Part 1 is the program of seed 001: six sentences, random 3-d word embeddings,
and for each sentence the attention of "to" (the blog's dot-product attention)
and of "fox" (its scaled self-attention) over the sentence's words, with the
predicted next word. Part 2 is the "bank" example of seed 003, computed.
"""
import numpy as np

from fastattn import blog

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells seashells by the seashore.",
    "I love to eat pizza.",
    "The cat chased the mouse.",
    "The sun is shining brightly.",
    "I am feeling happy today.",
]
BAR_WIDTH = 20

# seed 003's coordinates
RIVER, MONEY, BANK = np.array([0.0, 5.0]), np.array([8.0, 0.0]), np.array([6.0, 6.0])


def _bar(weight):
    return "#" * int(round(weight * BAR_WIDTH))


def print_sentences(word_to_index, index_to_word, embeddings, out=print):
    for number, sentence in enumerate(SENTENCES, 1):
        words = sentence.split()
        after_to, weights_to = blog.predict_next_word_with_attention(
            "to", words, embeddings, word_to_index)
        after_fox, weights_fox = blog.predict_next_word_with_self_attention(
            "fox", words, embeddings, word_to_index, index_to_word)
        width = max(len(w) for w in words + ["word"])
        out(f"Sentence {number}: {sentence}")
        out(f"  {'word':<{width}}  {'to':>7}  {'':<{BAR_WIDTH}}  {'fox':>7}")
        for word, w_to, w_fox in zip(words, weights_to, weights_fox):
            out(f"  {word:<{width}}  {w_to:7.4f}  {_bar(w_to):<{BAR_WIDTH}}  {w_fox:7.4f}  "
                f"{_bar(w_fox)}")
        out(f"  predicted next word: after 'to' -> {after_to!r}, after 'fox' -> {after_fox!r}")
        out("")


def _cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def print_bank(out=print):
    out('The "bank" example (seed 003): river [0, 5], money [8, 0], bank [6, 6]')
    out("")
    out("1. The blog's mixing weights, computed:")
    bank_1 = 0.9 * BANK + 0.1 * RIVER
    bank_2 = 0.8 * BANK + 0.2 * MONEY
    out(f"   BANK_1 = 0.9 bank + 0.1 river = {np.round(bank_1, 4).tolist()}"
        f"   (the blog: [5.4, 5.9]; its first formula, 0.9 river + 0.1 bank, gives"
        f" {np.round(0.9 * RIVER + 0.1 * BANK, 4).tolist()})")
    out(f"   BANK_2 = 0.8 bank + 0.2 money = {np.round(bank_2, 4).tolist()}"
        f"   (the blog: [6.4, 6.8], a slip: 0.8 * 6 + 0.2 * 0 = 4.8)")
    out("")
    out("2. Scaled dot-product self-attention of 'bank' over the words with coordinates:")
    for label, context, names in (("The bank of the river", [BANK, RIVER], ["bank", "river"]),
                                  ("Money in the bank", [MONEY, BANK], ["money", "bank"])):
        for scale_name, vectors in (("raw coordinates", context),
                                    ("unit vectors", [v / np.linalg.norm(v) for v in context])):
            query = vectors[names.index("bank")]
            weights, vector = blog.calculate_self_attention(query, np.array(vectors),
                                                            np.array(context))
            shown = ", ".join(f"{n} {w:.4f}" for n, w in zip(names, weights))
            out(f"   {label!r:24} {scale_name:15}: weights {shown}; contextual bank = "
                f"{np.round(vector, 4).tolist()}; cosine to river {_cosine(vector, RIVER):.3f},"
                f" to money {_cosine(vector, MONEY):.3f}")
    out(f"   (plain 'bank': cosine to river {_cosine(BANK, RIVER):.3f}, to money "
        f"{_cosine(BANK, MONEY):.3f}. With raw coordinates bank.bank = 72 dwarfs bank.river"
        f" = 30 and bank.money = 48, so softmax puts all weight on 'bank' itself; on unit"
        f" vectors the context moves 'bank' towards 'river' in one sentence and towards"
        f" 'money' in the other.)")


def _pyplot():
    """matplotlib.pyplot drawing to files (Agg), or SystemExit saying how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install 'fastattn[plot]')") from None
    return plt


def plot_heatmaps(path, embeddings, word_to_index):
    """One heatmap per sentence: the scaled self-attention of every word over every word."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    for ax, sentence in zip(axes.flat, SENTENCES):
        words = sentence.split()
        vectors = embeddings[[word_to_index[w] for w in words]]
        weights, _ = blog.calculate_self_attention(vectors, vectors, vectors)
        image = ax.imshow(weights, cmap="viridis")
        ax.set_xticks(range(len(words)), words, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(words)), words, fontsize=8)
        ax.set_title(sentence, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Self-attention weights per sentence (row: query word, column: key word)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args):
    word_to_index, index_to_word, embeddings = blog.create_word_representations(
        SENTENCES, dim=3, seed=args.seed)
    print(f"fastattn demo: the blog's next-word model, random 3-d embeddings (seed {args.seed})")
    print("weights of 'to' are the blog's dot-product attention; those of 'fox' its scaled"
          " self-attention\n")
    print_sentences(word_to_index, index_to_word, embeddings)
    print_bank()
    if args.plot:
        plot_heatmaps(args.plot, embeddings, word_to_index)
        print(f"\nheatmaps written to {args.plot}")
    return 0
