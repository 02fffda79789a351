"""A tiny learnable synthetic corpus (EC30 layout) and a matching tiny model config.

en words map one-to-one to de and fr words (fr also adds a particle), so a small model
learns it in a few hundred updates. Lines of <= 3 words are "phrase", longer "sentence"
(kinds manifest ``sources.{split}.en-xx``, as the built-in corpus writes it).
"""
import os
import random

WORDS = {
    "en": "red blue green cat dog bird one two three big small house".split(),
    "de": "rot blau grün Katze Hund Vogel eins zwei drei groß klein Haus".split(),
    "fr": "rouge bleu vert chat chien oiseau un deux trois grand petit maison".split(),
}
TINY_MODEL = dict(d_model=64, d_ff=128, heads=4, encoder_layers=2, decoder_layers=2)


def _line(lang, seq):
    words = [WORDS[lang][k] for k in seq]
    if lang == "fr":
        words = ["le"] + words
    return " ".join(words)


def make_corpus(root, langs=("de", "fr"), n_train=400, n_eval=24, seed=0):
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    for split, n in (("train", n_train), ("valid", n_eval), ("test", n_eval)):
        for x in langs:
            seqs = [[rng.randrange(12) for _ in range(rng.randint(1, 7))] for _ in range(n)]
            for lang in ("en", x):
                with open(os.path.join(root, f"{split}.en-{x}.{lang}"), "w", encoding="utf-8") as f:
                    f.write("".join(_line(lang, s) + "\n" for s in seqs))
            with open(os.path.join(root, f"sources.{split}.en-{x}"), "w", encoding="utf-8") as f:
                f.write("".join(("phrase" if len(s) <= 3 else "sentence") + "\n" for s in seqs))
    return root


def prepare(tmp_path, **kw):
    from neuronspec.data.binarize import prepare_corpus

    corpus = make_corpus(tmp_path / "corpus", **kw)
    return prepare_corpus(corpus, tmp_path / "prep", vocab_size=320, progress=False)
