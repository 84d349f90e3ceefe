"""``python -m fastattn demo``: the blog's example, end to end, on fastattn.

Part 1 is the program of seed 001: six sentences, random 3-d word embeddings,
and for each sentence the attention of "to" (the blog's dot-product attention)
and of "fox" (its scaled self-attention) over the sentence's words, with the
predicted next word. Part 2 is the "bank" example of seed 003, computed.

``demo --train`` (``run_train``) trains that model instead (fastattn/train.py:
learned embeddings and one causal self-attention layer, fastattn's forward and
backward) and shows the next words it predicts and where its attention looks.
"""
import numpy as np

from fastattn import blog, train

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


def _either(words):
    """'a', 'b' or 'c'."""
    quoted = [repr(w) for w in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def print_rule(corpus, out=print):
    """What counts as a correct prediction, and the lowest loss there is."""
    ambiguous = corpus.ambiguous_prefixes()
    out("A prediction counts as correct when some sentence that begins with the same words"
        " goes on with it.")
    for prefix, after in ambiguous.items():
        out(f"  {sum(after.values())} sentences begin {' '.join(prefix)!r}, then"
            f" {_either(list(after))}: no model can tell which, so any of them counts"
            f" (rows marked *).")
    out(f"Every other prefix has one next word. The lowest loss any model can reach is"
        f" {corpus.lowest_loss():.4f} (the entropy of those choices).")


def print_trained_sentences(trained, out=print):
    """Per sentence, the predicted next word after each of its words, and the
    attention of the last word read (the one that predicts the sentence's last
    word) over the sentence's words."""
    corpus = trained.corpus
    predicted, weights = train.predict(trained.params, corpus.inputs)
    correct = corpus.correct(predicted)
    ambiguous = corpus.ambiguous_prefixes()
    for row, words in enumerate(corpus.sentences):
        n = len(words) - 1
        last = words[n - 1]
        predictions = [corpus.index_to_word[int(i)] for i in predicted[row, :n]]
        word_width = max(len(w) for w in words + ["word"])
        guess_width = max(len(w) for w in predictions + ["predicted"])
        out(f"Sentence {row + 1}: {' '.join(words)}")
        out(f"  {'word':<{word_width}}  {'next':<{word_width}}  {'predicted':<{guess_width}}"
            f"  {'correct':<7}  attention of {last!r} (predicting {words[n]!r})")
        for position in range(n):
            mark = "*" if tuple(words[:position + 1]) in ambiguous else ""
            verdict = ("right" if correct[row, position] else "WRONG") + mark
            weight = weights[row, n - 1, position]
            out(f"  {words[position]:<{word_width}}  {words[position + 1]:<{word_width}}  "
                f"{predictions[position]:<{guess_width}}  {verdict:<7}  {weight:7.4f}  "
                f"{_bar(weight)}".rstrip())
        out("")


def plot_training(path, trained):
    """The loss and accuracy curves, and per sentence the trained attention heatmap."""
    plt = _pyplot()
    corpus = trained.corpus
    predicted, weights = train.predict(trained.params, corpus.inputs)
    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    steps = range(len(trained.losses))
    ax = axes[0, 0]
    ax.plot(steps, trained.losses)
    ax.axhline(corpus.lowest_loss(), color="gray", linestyle="--", label="lowest possible")
    ax.set_yscale("log")
    ax.set(title="Training loss (cross-entropy)", xlabel="Adam step", ylabel="loss")
    ax.legend()
    ax = axes[1, 0]
    ax.plot(steps, [100 * a for a in trained.accuracies])
    ax.set(title="Next words predicted right", xlabel="Adam step", ylabel="%", ylim=(0, 105))
    for row, ax in enumerate(list(axes[0, 1:]) + list(axes[1, 1:])):
        words = corpus.sentences[row]
        n = len(words) - 1
        image = ax.imshow(weights[row, :n, :n], cmap="viridis", vmin=0, vmax=1)
        labels = [f"{w} \u2192 {corpus.index_to_word[int(i)]}"
                  for w, i in zip(words, predicted[row, :n])]
        ax.set_xticks(range(n), words[:n], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_title(" ".join(words), fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle("Trained: loss, accuracy, and the causal self-attention weights per sentence"
                 " (row: word read \u2192 predicted next word, column: word attended to)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_train(args):
    """``demo --train``: train the model of fastattn/train.py and show what it learned."""
    corpus = train.Corpus(SENTENCES)
    print(f"fastattn demo --train: the blog's next-word model, trained (seed {args.seed})")
    print(f"{len(SENTENCES)} sentences split on spaces as the blog does: {corpus.vocabulary_size}"
          f" words, {corpus.scored} next words to predict.")
    print(f"Model: {train.DIM}-d word and position embeddings, one causal self-attention layer"
          f" (query, key, value projections; fastattn forward and backward), a residual"
          f" connection, an output projection to the {corpus.vocabulary_size} words; Adam,"
          f" float64.")
    print_rule(corpus)
    print("")

    def log(step, loss, correct, total):
        print(f"step {step:4d}  loss {loss:.4f}  right {correct:2d}/{total}")

    trained = train.train(SENTENCES, seed=args.seed, log=log)
    accuracy = trained.accuracy()
    solved = ("never all right" if trained.solved_at is None
              else f"all right first at step {trained.solved_at}")
    print(f"trained in {trained.seconds:.2f} s ({train.STEPS} steps, {solved}); accuracy"
          f" {100 * accuracy:.0f}%\n")
    print_trained_sentences(trained)
    predicted, _ = train.predict(trained.params, corpus.inputs, attention=False)
    without = int(corpus.correct(predicted).sum())
    print(f"Take the attention's output away from the trained model (the residual alone reaches"
          f" the output) and {without} of the {corpus.scored} next words are still right: the"
          f" other {corpus.scored - without} it gets right only with what the attention brings"
          f" in.")
    if args.plot:
        plot_training(args.plot, trained)
        print(f"\nloss curve and attention heatmaps written to {args.plot}")
    return 0 if accuracy == 1 else 1


def run(args):
    if args.train:
        return run_train(args)
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
