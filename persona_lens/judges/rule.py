"""Rule judges: deterministic 0-100 scores for traits that a simple rule measures exactly.

A rule is a plain function ``(question, answer) -> float | None``. Rules need no model and no network, so they make
offline runs with a small model (SmolLM2-135M-Instruct) fully checkable: a trait file that names a rule (``"rule":
"french"``) can be scored by ``RuleJudge("french")`` instead of an LLM judge. ``coherence`` stands in for the LLM
coherence rubric on CPU-only runs.

Rules (all in ``RULES``):

* ``french``: share of recognised words that are French, 100 * french / (french + english). None when no word is
  recognised (or the answer is empty).
* ``pirate``: density of distinct pirate markers per 15-word unit (core: arr, ahoy, matey, aye, me hearties, ...;
  dialect at half weight: ye, o', -in' endings, ...; sea words at 0.4), through a saturating curve: one core marker
  per unit -> ~57, two -> ~82, more -> towards 100; dialect and sea words without a core marker stay below 50.
* ``shouting``: 100 * uppercase letters / cased letters. None when the answer has no cased letter.
* ``emoji``: number of emoji (a ZWJ sequence, a flag or an emoji with modifiers counts once): 0 -> 0, 1 -> 60,
  2 -> 85, 3 or more -> 100.
* ``exclamation`` (trait ``enthusiastic``): 100 * share of real sentences (3 words or more) that end with "!" / 0.5,
  capped at 100; 0 when the answer has no real sentence ("Yes!" alone is an interjection, not a sentence).
* ``coherence``: 100 times the product of five factors in [0, 1] (length, share of letters and digits, distinct word
  trigrams, loops, share of known words). Language, capitals and emoji do not change it.

The rubric passed to ``RuleJudge.score`` is ignored: a rule always measures the same thing.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from persona_lens.judges.base import Score, Verdict, check_items

__all__ = [
    "RULES",
    "RuleJudge",
    "coherence_factors",
    "count_emoji",
    "loop_fraction",
    "pirate_density",
    "real_sentences",
    "pirate_markers",
    "score_coherence",
    "score_emoji",
    "score_french",
    "score_pirate",
    "score_shouting",
]

Rule = Callable[[str, str], Score]


def _clean(answer: str | None) -> str:
    """The answer as text, with typographic apostrophes made plain (None counts as empty)."""
    return (answer or "").replace("\u2019", "'").replace("\u02bc", "'")


def _clamp01(value: float) -> float:
    return min(1.0, max(0.0, value))


# ---------------------------------------------------------------------------------------------------------------------
# french

# Frequent French words that are not also frequent English words. Ambiguous words (a, on, me, son, plus, car, as, ai,
# ton, comment, par, adore) are left out of both lists so they count for neither language.
_FRENCH_WORDS = frozenset(
    """
    le la les un une des du de au aux et ou mais donc ni que qui quoi quand pourquoi
    je tu il elle nous vous ils elles moi toi lui eux leur leurs mon ma mes ta tes sa ses notre nos votre vos
    ce cet cette ces cela ceci celui celle ceux celles ne pas jamais rien personne
    est es suis sommes sont était étais étaient sera serait avons avez ont avoir avait
    fait fais faire faites peux peut pouvons pouvez peuvent veux veut voulez vais va allons allez vont aller
    dans pour avec sans sur sous chez vers entre depuis pendant avant
    bien aussi beaucoup toujours souvent parfois encore ici voici alors puis ensuite
    oui non merci bonjour bonsoir salut aime aimer mange manger bois boire
    parce comme tout tous toute toutes autre autres chaque quelque quelques y en
    petit petite bon bonne jour matin soir temps chose choses fois monde gens chat chien pain eau lait
    """.split()
)
# Elided forms (l'eau, j'aime, c'est, qu'il): the tokenizer keeps the apostrophe on these.
_FRENCH_ELIDED = frozenset("c' d' j' l' m' n' s' t' qu' jusqu' lorsqu' puisqu'".split())
_FRENCH_LETTERS = frozenset("àâæçéèêëîïôœùûüÿ")
_ENGLISH_WORDS = frozenset(
    """
    the an and or but so if then than because of to in at by for with from about into over after before under
    between through i you he she it we they him her us them my your his its our their mine yours hers ours theirs
    this that these those there here is are was were be been being am do does did done have has had will would
    can could should shall may might must not no yes what which who whom whose when where why how all any some many
    much more most other such only also just very too like love eat eating breakfast good day time really usually
    often always never sometimes every each one two well get got make made go going know think want favorite
    favourite morning night today people thing things way new great little lot lots enjoy
    """.split()
)
_WORD_WITH_APOSTROPHE = re.compile(r"[^\W\d_]+'?")


def score_french(question: str, answer: str) -> Score:
    """100 * French words / (French + English words) among the recognised words; None if none is recognised.

    A word is French if it is in a compact lexicon of French function words, an elided form (``l'``, ``j'``,
    ``qu'``), or contains a letter with a French accent (é, è, à, ç, ...). A word is English if it is in a lexicon of
    English function words. Other words (names, nouns shared by both languages) are ignored.
    """
    french = english = 0
    for token in _WORD_WITH_APOSTROPHE.findall(_clean(answer).lower()):
        if token in _FRENCH_ELIDED:
            french += 1
            continue
        word = token.rstrip("'")
        if word in _FRENCH_WORDS or any(letter in _FRENCH_LETTERS for letter in word):
            french += 1
        elif word in _ENGLISH_WORDS:
            english += 1
    if french + english == 0:
        return None
    return 100.0 * french / (french + english)


# ---------------------------------------------------------------------------------------------------------------------
# pirate

# Each entry is one marker: it counts once however often it appears. Core markers are pirate speech and nothing
# else; dialect markers (ye, o', -in', "me" for "my", "I be") are also rural or archaic English, and the first thing
# an over-steered model sprinkles into word salad, so on their own they cannot make a reply pirate; weak markers are
# sea vocabulary that plain English about ships also uses.
_CORE_PIRATE = {
    "arr": r"\by?ar{2,}g?h*\b",
    "ahoy": r"\bahoy\b",
    "matey": r"\bmate(?:y|ys|ies)\b",
    "aye": r"\baye\b",
    "hearties": r"\bhearties\b|\bme hearty\b",
    "landlubber": r"\blandlubbers?\b",
    "avast": r"\bavast\b",
    "scallywag": r"\bscall[ay]wags?\b",
    "shiver me timbers": r"\bshiver me timbers\b|\bblow me down\b",
    "booty": r"\bbooty\b",
    "plunder": r"\bplunder\w*",
    "grog": r"\bgrog\b",
    "doubloons": r"\bdoubloons?\b|\bpieces? o' eight\b",
    "buccaneer": r"\bbuccaneers?\b|\bfreebooters?\b|\bcorsairs?\b",
    "yo ho": r"\byo[- ]?ho\b",
    "cap'n": r"\bcap'n\b",
    "bilge": r"\bbilge\b",
    "davy jones": r"\bdavy jones\b",
    "walk the plank": r"\bwalk(?:s|ed|ing)? the plank\b",
    "jolly roger": r"\bjolly roger\b",
}
_DIALECT_PIRATE = {
    "ye": r"\bye\b",
    "yer": r"\byer\b",
    "o'": r"\bo'(?=\s)",
    "me (my)": r"\bme (?:favourite|favorite|ship|crew|belly|bones|hammock|treasure|booty|parrot|bag|boots|lads?|"
    r"beauty|gold|sword|cutlass|trusty|old|own|mates?)\b",
    "-in'": r"[a-z]in'(?![a-z])",
    "i be": r"(?:^|[.!?,;:]\s*)(?:i|we|they|there) be\b",  # "I be thinkin'", "There be dragons"
}
_STRONG_PIRATE = {**_CORE_PIRATE, **_DIALECT_PIRATE}
_WEAK_PIRATE = {
    "treasure": r"\btreasures?\b",
    "ship": r"\bships?\b",
    "sea": r"\bseas?\b|\bocean\b",
    "sail": r"\bsail(?:s|ing|ed|or|ors)?\b",
    "captain": r"\bcaptains?\b",
    "pirate": r"\bpirates?\b",
    "parrot": r"\bparrots?\b",
    "crew": r"\bcrew\b",
    "deck": r"\bdecks?\b",
    "rum": r"\brum\b",
    "gold": r"\bgold\b",
}
_STRONG_PIRATE_RE = {name: re.compile(pattern) for name, pattern in _STRONG_PIRATE.items()}
_WEAK_PIRATE_RE = {name: re.compile(pattern) for name, pattern in _WEAK_PIRATE.items()}
_SENTENCE_END = re.compile(r"[.!?…]+")
_SENTENCE = re.compile(r"[^.!?…]*[.!?…]+")
_SENTENCE_WORDS = 3  # a "real" sentence has at least this many words: "Yes!" and "Wow!!!" are not
_DIALECT_WEIGHT, _DIALECT_CAP = 0.5, 1.0
_WEAK_WEIGHT, _WEAK_CAP = 0.4, 0.8
_NO_CORE_CAP = 0.8  # without a core marker a reply stays below 50: 100 * (1 - exp(-0.85 * 0.8)) = 49.3
_PIRATE_RATE = 0.85  # score = 100 * (1 - exp(-rate * density)): 1 -> 57, 2 -> 82, 3 -> 92
_PIRATE_UNIT_WORDS = 15  # a "sentence-ish" unit: markers are counted per 15 words


def pirate_markers(answer: str) -> tuple[set[str], set[str]]:
    """The distinct strong (core and dialect) and weak pirate markers found in ``answer``."""
    text = _clean(answer).lower()
    strong = {name for name, pattern in _STRONG_PIRATE_RE.items() if pattern.search(text)}
    weak = {name for name, pattern in _WEAK_PIRATE_RE.items() if pattern.search(text)}
    return strong, weak


def real_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (up to and including their end marks) with at least 3 words: "Yes!" is not one.
    Text after the last end mark is not a sentence yet."""
    return [s for s in _SENTENCE.findall(text) if len(_ANY_WORD.findall(s)) >= _SENTENCE_WORDS]


def pirate_density(answer: str) -> float:
    """Weighted pirate markers per sentence-ish unit (see :func:`score_pirate`)."""
    strong, weak = pirate_markers(answer)
    core = len(strong & _CORE_PIRATE.keys())
    dialect = min(_DIALECT_CAP, _DIALECT_WEIGHT * len(strong & _DIALECT_PIRATE.keys()))
    markers = core + dialect + min(_WEAK_CAP, _WEAK_WEIGHT * len(weak))
    if core == 0:
        markers = min(markers, _NO_CORE_CAP)
    text = _clean(answer)
    n_words = len(_WORD_WITH_APOSTROPHE.findall(text))
    return markers / max(1.0, n_words / _PIRATE_UNIT_WORDS, len(real_sentences(text)))


def score_pirate(question: str, answer: str) -> Score:
    """Pirate-speech score from the density of distinct pirate markers, saturating towards 100.

    markers = core markers + min(1, 0.5 * dialect markers) + min(0.8, 0.4 * weak markers), at most 0.8 without a
    core marker (so ye, o' and sea words alone stay below 50); density = markers per sentence-ish unit: the
    answer's real sentences (3 words or more), or 15-word pieces when that is more (at least one unit), so a longer
    reply needs proportionally more markers; score = 100 * (1 - exp(-0.85 *
    density)). Empty answer -> 0.
    """
    return 100.0 * (1.0 - math.exp(-_PIRATE_RATE * pirate_density(answer)))


# ---------------------------------------------------------------------------------------------------------------------
# shouting


def score_shouting(question: str, answer: str) -> Score:
    """100 * uppercase letters / cased letters (letters that have an upper and lower case); None if there are none."""
    upper = lower = 0
    for char in _clean(answer):
        if char.isupper():
            upper += 1
        elif char.islower():
            lower += 1
    if upper + lower == 0:
        return None
    return 100.0 * upper / (upper + lower)


# ---------------------------------------------------------------------------------------------------------------------
# exclamation (enthusiasm)

_EXCLAIMING_SHARE = 0.5


def score_exclamation(question: str, answer: str) -> Score:
    """Enthusiasm measured by its punctuation: 100 * (share of real sentences, of 3 words or more, whose end carries
    "!") / 0.5, capped at 100, so an answer whose every other real sentence exclaims scores 100; 0 for an answer
    with no real sentence (no sentence end, or only interjections such as "Yes!" and "Wow!!!")."""
    sentences = real_sentences(_clean(answer))
    if not sentences:
        return 0.0
    share = sum("!" in _SENTENCE_END.findall(s)[-1] for s in sentences) / len(sentences)
    return 100.0 * min(1.0, share / _EXCLAIMING_SHARE)


# ---------------------------------------------------------------------------------------------------------------------
# emoji

_EMOJI_RANGES = (
    (0x1F000, 0x1F0FF),  # mahjong and playing cards
    (0x1F170, 0x1F251),  # enclosed letters and ideographs used as emoji
    (0x1F300, 0x1FAFF),  # pictographs, emoticons, transport, supplemental symbols
)


def _code_points(spec: str) -> frozenset[int]:
    """Code points from a compact spec: hex numbers and hex ranges ``a-b``, separated by spaces."""
    points: set[int] = set()
    for part in spec.split():
        low, _, high = part.partition("-")
        points.update(range(int(low, 16), int(high or low, 16) + 1))
    return frozenset(points)


# Emoji in the Basic Multilingual Plane (Unicode emoji-data, Emoji=Yes), from blocks that also hold plain symbols
# (✓, ☐, ♩, →, ©) that must not count. A plain symbol followed by the emoji variation selector U+FE0F counts too.
_BMP_EMOJI = _code_points(
    "231A-231B 2328 23CF 23E9-23F3 23F8-23FA 24C2 25AA-25AB 25B6 25C0 25FB-25FE "
    "2600-2604 260E 2611 2614-2615 2618 261D 2620 2622-2623 2626 262A 262E-262F 2638-263A 2640 2642 2648-2653 "
    "265F-2660 2663 2665-2666 2668 267B 267E-267F 2692-2697 2699 269B-269C 26A0-26A1 26A7 26AA-26AB 26B0-26B1 "
    "26BD-26BE 26C4-26C5 26C8 26CE-26CF 26D1 26D3-26D4 26E9-26EA 26F0-26F5 26F7-26FA 26FD "
    "2702 2705 2708-270D 270F 2712 2714 2716 271D 2721 2728 2733-2734 2744 2747 274C 274E 2753-2755 2757 "
    "2763-2764 2795-2797 27A1 27B0 27BF 2934-2935 2B05-2B07 2B1B-2B1C 2B50 2B55 3030 303D 3297 3299"
)
_ZWJ, _VARIATION_SELECTOR, _KEYCAP = 0x200D, 0xFE0F, 0x20E3
_SKIN_TONES = (0x1F3FB, 0x1F3FF)
_REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)
_EMOJI_SCORES = (0.0, 60.0, 85.0, 100.0)  # by number of emoji; 3 or more -> 100


def _is_emoji_component(code: int) -> bool:
    """Joiners, variation selectors, skin tones, keycap marks and tags: parts of an emoji that do not count alone."""
    return (
        code in (_ZWJ, _VARIATION_SELECTOR, _KEYCAP)
        or _SKIN_TONES[0] <= code <= _SKIN_TONES[1]
        or 0xE0020 <= code <= 0xE007F  # tag characters (subdivision flags)
    )


def _is_emoji(code: int, next_code: int | None = None) -> bool:
    """Whether this code point is an emoji (``next_code``, the one after it, catches a symbol + U+FE0F)."""
    if _is_emoji_component(code):
        return False
    if code in _BMP_EMOJI or _REGIONAL_INDICATORS[0] <= code <= _REGIONAL_INDICATORS[1]:
        return True
    if any(low <= code <= high for low, high in _EMOJI_RANGES):
        return True
    return next_code == _VARIATION_SELECTOR and not code <= 0x20  # ©️ ™️ ↔️ 7️⃣: a symbol in emoji style


def count_emoji(answer: str) -> int:
    """Number of emoji in ``answer``; a ZWJ sequence (👨‍👩‍👧) or a flag (two regional indicators) counts once."""
    text = _clean(answer)
    count = 0
    previous = None
    pending_flag = False
    for index, char in enumerate(text):
        code = ord(char)
        next_code = ord(text[index + 1]) if index + 1 < len(text) else None
        if _is_emoji(code, next_code):
            is_flag_half = _REGIONAL_INDICATORS[0] <= code <= _REGIONAL_INDICATORS[1]
            if previous == _ZWJ:
                pass  # continues a joined sequence
            elif is_flag_half and pending_flag:
                pending_flag = False  # second half of a flag
            else:
                count += 1
                pending_flag = is_flag_half
        elif not _is_emoji_component(code):
            pending_flag = False
        previous = code
    return count


def score_emoji(question: str, answer: str) -> Score:
    """Emoji use: 0 emoji -> 0, 1 -> 60, 2 -> 85, 3 or more -> 100."""
    return _EMOJI_SCORES[min(count_emoji(answer), len(_EMOJI_SCORES) - 1)]


# ---------------------------------------------------------------------------------------------------------------------
# coherence

_WORD = re.compile(r"[^\W_]+")
_MAX_LOOP_PERIOD = 100  # longest repeated unit (in characters) looked for
_MIN_LOOP_COPIES = 3
_MIN_LOOP_CHARS = 10
_MAX_COHERENCE_CHARS = 20_000


def _longest_true_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    padded = np.concatenate(([0], mask.astype(np.int8), [0]))
    edges = np.diff(padded)
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return int((ends - starts).max())


def loop_fraction(text: str) -> float:
    """Share of ``text`` covered by its longest loop: a unit of 1-100 characters repeated 3+ times in a row.

    Loops shorter than 10 characters ("ll", "!!!", "hahaha") are not counted.
    """
    n = len(text)
    if n < _MIN_LOOP_CHARS:
        return 0.0
    codes = np.fromiter((ord(char) for char in text), dtype=np.int64, count=n)
    longest = 0
    for period in range(1, min(_MAX_LOOP_PERIOD, n // _MIN_LOOP_COPIES) + 1):
        run = _longest_true_run(codes[period:] == codes[:-period])
        region = run + period
        if run >= (_MIN_LOOP_COPIES - 1) * period and region >= _MIN_LOOP_CHARS:
            longest = max(longest, region)
    return longest / n


_PIRATE_LEXICON = frozenset(
    "arr ahoy matey ye yer ya me hearties aye landlubber booty plunder scallywag grog avast "
    "yo ho shiver timbers lass lad lubber swab".split()
)


@functools.lru_cache(maxsize=1)
def _english_words() -> frozenset[str]:
    from english_words import get_english_words_set

    return frozenset(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))


def known_word_share(text: str) -> float:
    """Share of the words of ``text`` that are words at all: in a 260k-word English dictionary, or French (our
    lexicon, or any accented word), or pirate vocabulary (also g-dropping: "sailin'").

    Every run of letters is a word, in any script: words in other scripts (Hebrew, CJK ... fragments of
    over-steered byte-level output) are unknown. Single letters are words only as "a", "I", "o", "y", "à", or in a
    contraction or elision ("don't", "it's", "l'eau", "qu'il").
    """
    text = _CLITIC.sub(" ", text.lower())
    words = _ANY_WORD.findall(text)
    if not words:
        return 0.0
    english = _english_words()

    def known(word: str) -> bool:
        if not _LATIN_WORD.fullmatch(word):
            return False
        if len(word) == 1:
            return word in _SINGLE_LETTER_WORDS
        if word in english or word in _FRENCH_WORDS or word in _PIRATE_LEXICON:
            return True
        if word in _FRENCH_COMMON or (word[-1] in "sx" and word[:-1] in _FRENCH_COMMON):
            return True
        if any(char in _FRENCH_LETTERS for char in word) or (word.endswith("in") and word + "g" in english):
            return True
        # the dictionaries list lemmas: accept regular inflections (eggs, watched, cooking, quickly, bigger)
        return any(
            word.endswith(suffix) and (word[: -len(suffix)] in english or word[: -len(suffix)] + "e" in english)
            for suffix in _SUFFIXES
            if len(word) > len(suffix) + 1
        )

    return sum(known(w) for w in words) / len(words)


_LATIN_WORD = re.compile(r"[a-zà-ÿœæ]+")
_ANY_WORD = re.compile(r"[^\W\d_]+")
_SINGLE_LETTER_WORDS = frozenset("a i o y à".split())
# Contractions (it's, don't, we'll, I'd) and elisions (l'eau, qu'il, j'aime): removed before words are counted.
_CLITIC = re.compile(r"(?<=[^\W\d_])['’](?:s|t|d|m|ll|ve|re)\b|\b(?:[ldjnsmtc]|qu)['’](?=[^\W\d_])")
# Common French content words (singular; "s"/"x" plurals are accepted), so plain French is not taken for word salad.
_FRENCH_COMMON = frozenset(
    """
qu jusqu lorsqu puisqu aime aimer adore adorer mange manger boire bois boit dormir dors dort lire lis lit ecrire
faire fais fait aller vais va vont venir viens vient voir vois voit regarder regarde jouer joue chanter chante
danser danse dessiner dessine peindre marcher marche courir cours nager nage cuisiner cuisine travailler travaille
parler parle penser pense croire crois savoir sais sait pouvoir peux peut vouloir veux veut prendre prends prend
donner donne trouver trouve rester reste partir pars part sortir sors sort acheter achete visiter visite aider aide
pain beurre fromage lait eau vin caf the thé chocolat sucre sel poivre fruit fruits pomme poire orange banane fraise
raisin tomate carotte salade soupe viande poulet poisson riz pates oeuf oeufs confiture gateau tarte croissant
repas matin midi soir nuit jour jours semaine mois an annee heure temps pluie soleil neige vent nuage ciel mer
plage montagne foret arbre fleur jardin maison ville village pays monde rue route voiture velo train avion bateau
chat chien oiseau cheval vache mouton poule lapin souris poisson animal animaux couleur rouge bleu vert jaune noir
blanc gris rose violet marron livre film musique chanson jeu sport football tennis ecole classe ami amie amis
famille mere pere frere soeur enfant enfants homme femme gens personne bonheur joie amour vie nombre chiffre sept
huit neuf dix cent mille premier dernier petit petite grand grande beau belle bon bonne mauvais chaud froid
nouveau vieux jeune joli jolie heureux heureuse calme gentil doux douce vraiment souvent toujours jamais parfois
aussi encore deja bien mieux beaucoup peu trop tres plus moins ensemble dehors dedans ici partout chose choses
parce comme quand ou oui non merci bonjour bonsoir salut voila chez avec sans pour par sur sous dans entre
apres avant pendant depuis vers contre selon mon ma mes ton ta tes son sa ses notre nos votre vos leur leurs
un deux trois quatre cinq six onze douze vingt trente seconde minute chaude savon laver lave main tete
pied bras corps visage dent cheveu propre sale
""".split()
)
_SUFFIXES = ("s", "es", "ed", "d", "ing", "ly", "er", "est", "ies", "ied")


def coherence_factors(answer: str) -> dict[str, float]:
    """The five factors (each 0-1) whose product times 100 is the ``coherence`` score.

    * ``length``: 0 words -> 0, 1 word -> 0.4, rising by 0.15 a word to 1 at 5 words.
    * ``letters``: share of non-space characters (emoji left out) that are letters or digits; 1 from 0.7 up,
      0 at 0.3 and below.
    * ``trigrams``: distinct word trigrams / word trigrams; 1 from 0.8 up, 0 at 0.3 and below (1 under 3 words).
    * ``loops``: from ``loop_fraction`` of the lower-cased, space-collapsed text; 1 up to 0.25, 0 from 0.7 up.
    * ``words``: from ``known_word_share``; 1 from 0.85 up, 0 at 0.6 and below (word salad from over-steering).
      Measured on SmolLM2 sweep replies: unsteered 0.90 on average, well-steered pirate speech 0.85-0.87,
      over-steered word salad 0.63-0.81.
    """
    text = " ".join(_clean(answer).lower().split())[:_MAX_COHERENCE_CHARS]
    words = _WORD.findall(text)
    if not words:
        return {"length": 0.0, "letters": 0.0, "trigrams": 0.0, "loops": 0.0, "words": 0.0}
    length = min(1.0, 0.4 + 0.15 * (len(words) - 1))
    visible = [
        char
        for index, char in enumerate(text)
        if not char.isspace()
        and not _is_emoji(ord(char), ord(text[index + 1]) if index + 1 < len(text) else None)
        and not _is_emoji_component(ord(char))
    ]
    share = sum(char.isalnum() for char in visible) / len(visible) if visible else 0.0
    letters = _clamp01((share - 0.3) / 0.4)
    if len(words) >= 3:
        trigrams = list(zip(words, words[1:], words[2:]))
        distinct = len(set(trigrams)) / len(trigrams)
        trigram_factor = _clamp01((distinct - 0.3) / 0.5)
    else:
        trigram_factor = 1.0
    loops = 1.0 - _clamp01((loop_fraction(text) - 0.25) / 0.45)
    known = _clamp01((known_word_share(text) - 0.6) / 0.25)
    return {"length": length, "letters": letters, "trigrams": trigram_factor, "loops": loops, "words": known}


def score_coherence(question: str, answer: str) -> Score:
    """Rule-based coherence (0-100) for runs without an LLM judge: penalises empty, very short, looping,
    non-textual and non-word answers. It cannot tell sense from fluent nonsense; use an LLM judge for that."""
    return 100.0 * math.prod(coherence_factors(answer).values())


# ---------------------------------------------------------------------------------------------------------------------

#: Bumped when a rule's scores change, so persistent judge caches do not serve scores of the old rule.
RULE_VERSIONS: dict[str, int] = {"coherence": 3, "pirate": 2, "exclamation": 2}

RULES: dict[str, Rule] = {
    "french": score_french,
    "pirate": score_pirate,
    "shouting": score_shouting,
    "emoji": score_emoji,
    "exclamation": score_exclamation,
    "coherence": score_coherence,
}


class RuleJudge:
    """A judge that scores with one deterministic rule from ``RULES``; the rubric is ignored."""

    def __init__(self, rule: str) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(sorted(RULES))}")
        self.rule = rule
        self._function = RULES[rule]

    @property
    def judge_id(self) -> str:
        version = RULE_VERSIONS.get(self.rule, 1)
        return f"rule:{self.rule}" if version == 1 else f"rule:{self.rule}@v{version}"

    def score(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Score]:
        return [self._function(question, answer) for question, answer in check_items(items)]

    def score_detailed(self, rubric: str, items: Sequence[tuple[str, str]]) -> list[Verdict]:
        """Rules are deterministic, so every outcome is final and cacheable, None ("nothing to measure") too."""
        return [
            Verdict(score, "" if score is not None else f"rule {self.rule}: nothing to measure", True)
            for score in self.score(rubric, items)
        ]

    def __repr__(self) -> str:
        return f"RuleJudge({self.rule!r})"
