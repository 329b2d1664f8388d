"""tinytales: a built-in corpus of generated children's stories with known latent factors.

Why a generated corpus: a new user with no network can train and evaluate a JEPA in minutes,
and because every story records the choices that made it (hero, animal, place, ...), a
linear probe can ask whether the encoder learned them.

The grammar is built so that predicting a hidden span needs the context, which is what a
JEPA learns from: the hero's name recurs throughout the story; each factor is mentioned in
several wordings (the forest, the woods, the tall trees); the season shows up again in what
the characters see; and the ending follows from two earlier sentences together (what the
friend is like, and whether the hero shares), so the last sentences are predictable only from
the middle, and only by an encoder that combines them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HEROES = [
    "Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Leo",
    "Zoe", "Sam", "Ella", "Finn", "Ruby", "Jack", "Nora", "Otto",
]
ANIMALS = {  # kind: (plural, a sound it makes)
    "bunny": ("bunnies", "hopped"),
    "fox": ("foxes", "trotted"),
    "bear": ("bears", "lumbered"),
    "owl": ("owls", "flew"),
    "mouse": ("mice", "scurried"),
    "duck": ("ducks", "waddled"),
    "cat": ("cats", "padded"),
    "dog": ("dogs", "ran"),
    "frog": ("frogs", "jumped"),
    "turtle": ("turtles", "crawled"),
}
PLACES = {  # place: several wordings, and a landmark found there
    "forest": (["the forest", "the woods", "the tall green trees"], "an old oak tree"),
    "beach": (["the beach", "the seaside", "the sandy shore"], "a big rock by the waves"),
    "farm": (["the farm", "the barn and the fields", "the red barn"], "the haystack"),
    "mountain": (["the mountain", "the high hills", "the rocky peak"], "a cold stream"),
    "garden": (["the garden", "the flower beds", "the little garden"], "the rose bush"),
    "village": (["the village", "the small town", "the busy market"], "the old well"),
    "pond": (["the pond", "the still water", "the lily pads"], "the wooden bridge"),
    "meadow": (["the meadow", "the grassy field", "the open field"], "a patch of daisies"),
}
OBJECTS = {  # object: several wordings
    "ball": ["a red ball", "the red ball", "the bouncy ball"],
    "kite": ["a yellow kite", "the kite", "the kite with a long tail"],
    "hat": ["a blue hat", "the blue hat", "the soft hat"],
    "key": ["a shiny key", "the shiny key", "the little golden key"],
    "boat": ["a toy boat", "the toy boat", "the little wooden boat"],
    "drum": ["a small drum", "the drum", "the loud little drum"],
    "book": ["a picture book", "the book", "the book full of pictures"],
    "lantern": ["a paper lantern", "the lantern", "the glowing lantern"],
    "shell": ["a pink shell", "the shell", "the pretty pink shell"],
    "flute": ["a wooden flute", "the flute", "the flute that sang"],
}
SEASONS = {  # season: how it is first named, and what the characters see later
    "spring": ("one spring morning", "new flowers were opening everywhere"),
    "summer": ("one hot summer day", "the sun was bright and warm"),
    "autumn": ("one windy autumn day", "orange leaves were falling all around"),
    "winter": ("one snowy winter day", "soft snow covered the ground"),
}
NATURES = ["kind", "greedy"]
CHOICES = ["share", "keep"]
ENDINGS = ["happy", "sad"]
FACTORS = ["hero", "animal", "place", "object", "season", "friend", "nature", "choice", "ending"]

# Factors a bag of words cannot read off the story, so a probe for them measures what an
# encoder learned from context: who is the friend (both names occur; only their roles differ),
# and the ending read from the story *before* it is told (``Tale.prefix``): it is happy exactly
# when the choice suits the friend (share with a kind one, keep from a greedy one), an XNOR of
# two sentences that no linear function of word counts computes.
CONTEXTUAL_FACTORS = {"friend": "full", "ending": "prefix"}

_NATURES = {
    "kind": ["{friend} was gentle and kind.", "Everyone knew {friend} as a kind friend.",
             "{friend} always helped others."],
    "greedy": ["{friend} was greedy.", "Everyone knew {friend} never gave things back.",
               "{friend} liked to grab what others had."],
}
_CHOICES = {
    "share": ['"Yes, let us share it," said {hero}.',
              "{hero} thought for a moment and decided to share {obj}."],
    "keep": ['"No, it is mine," said {hero}.',
             "{hero} decided to keep {obj} and held it tight."],
}
_OUTCOMES = {  # (choice, nature): the last sentences; happy when the choice suits the friend
    ("share", "kind"): ["{hero} and {friend} played with {obj} in {place}.",
                        "They laughed all day, and {friend} became {hero}'s best friend.",
                        "{hero} went home happy."],
    ("keep", "greedy"): ["{friend} tried to grab {obj}, but {hero} held on.",
                         "It stayed safe, and {friend} went away.",
                         "{hero} went home happy."],
    ("share", "greedy"): ["{friend} ran off with {obj} and never came back.",
                          "{hero} looked all over {place}, but it was gone.",
                          "{hero} sat alone and cried."],
    ("keep", "kind"): ["{friend} walked away with tears in {friend}'s eyes.",
                       "{hero} played with {obj} alone in {place}, but it was no fun.",
                       "{hero} sat alone and cried."],
}

_FILLERS = [
    "{hero} liked to sing little songs.",
    "Every day, {hero} said hello to the birds.",
    "{hero} was small, but very brave.",
    "The {animal} had soft ears and quick feet.",
    "{hero} loved to explore and to ask questions.",
    "Sometimes {hero} took a nap after lunch.",
]


@dataclass(frozen=True)
class Tale:
    text: str
    factors: dict[str, str]
    prefix: str  # the story up to the hero's choice, before the outcome


def generate(n: int, seed: int = 0) -> list[Tale]:
    """``n`` stories, the same ones for the same seed."""
    rng = random.Random(seed)
    return [_tale(rng) for _ in range(n)]


def factor_values() -> dict[str, list[str]]:
    """Every value each factor can take, in a fixed order (the classes of a probe)."""
    return {
        "hero": list(HEROES),
        "animal": list(ANIMALS),
        "place": list(PLACES),
        "object": list(OBJECTS),
        "season": list(SEASONS),
        "friend": list(HEROES),
        "nature": list(NATURES),
        "choice": list(CHOICES),
        "ending": list(ENDINGS),
    }


def _tale(rng: random.Random) -> Tale:
    hero, friend = rng.sample(HEROES, 2)
    animal = rng.choice(list(ANIMALS))
    friend_animal = rng.choice(list(ANIMALS))
    place = rng.choice(list(PLACES))
    obj = rng.choice(list(OBJECTS))
    season = rng.choice(list(SEASONS))
    nature, choice = rng.choice(NATURES), rng.choice(CHOICES)
    ending = "happy" if (choice == "share") == (nature == "kind") else "sad"

    plural, moves = ANIMALS[animal]
    place_words, landmark = PLACES[place]
    obj_words = OBJECTS[obj]
    season_start, season_sight = SEASONS[season]
    w = rng.choice  # a wording

    s = [
        w([
            f"Once upon a time, there was a little {animal} named {hero}.",
            f"Once there was a {animal} called {hero}.",
            f"There once lived a young {animal}. Its name was {hero}.",
        ]),
        w([
            f"{hero} lived in {place_words[0]} with the other {plural}.",
            f"{hero} made a home in {place_words[0]}.",
        ]),
    ]
    if rng.random() < 0.5:
        s.append(w(_FILLERS).format(hero=hero, animal=animal))
    s += [
        f"{season_start.capitalize()}, {hero} {moves} to {landmark}.",
        w([
            f"There, {hero} found {obj_words[0]}.",
            f"Near {landmark}, {hero} saw {obj_words[0]} lying in the grass.",
        ]),
        w([
            f"{hero} picked up {obj_words[1]} and smiled.",
            f"{hero} held {obj_words[1]} close.",
        ]),
        w([
            f"Then {friend} the {friend_animal} came by.",
            f"Soon a {friend_animal} named {friend} walked up to {hero}.",
        ]),
        f'"Can I play with {obj_words[1]}?" asked {friend}.',
    ]
    if rng.random() < 0.5:
        s.append(f"All around {place_words[1]}, {season_sight}.")
    s.append(w(_NATURES[nature]).format(friend=friend))
    s.append(w(_CHOICES[choice]).format(hero=hero, obj=obj_words[1]))
    prefix = " ".join(s)
    s += [line.format(hero=hero, friend=friend, obj=obj_words[2], place=place_words[2])
          for line in _OUTCOMES[(choice, nature)]]
    factors = {
        "hero": hero, "animal": animal, "place": place, "object": obj, "season": season,
        "friend": friend, "nature": nature, "choice": choice, "ending": ending,
    }
    return Tale(text=" ".join(s), factors=factors, prefix=prefix)
