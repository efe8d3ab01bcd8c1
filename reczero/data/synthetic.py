"""A seeded synthetic interaction set that needs no download: the embedded demo and smoke dataset.

It is built so that history carries real signal about the target rating, which is what a model
has to learn to use: each user has latent tastes over genres and a personal bias, each item has
genres, a quality bias and a description, and a rating is

    rating = round(mu + b_user + b_item + taste_strength * affinity(user, item genres) + noise)

clipped to 1-5. Reviews are written from templates that depend on the rating and on the genre the
user liked or disliked, so a model can read tastes off the user's past reviews. This is a demo for
smoke runs and the default `make train-grpo`; it is not a benchmark, and numbers on it say nothing
about real recommenders.
"""

from __future__ import annotations

import random

from reczero.data.schema import SCALES, Interaction, InteractionData, Item

GENRES = (
    "Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi",
    "Thriller", "Animation", "Documentary", "Fantasy", "Mystery", "Western",
)  # fmt: skip

_ADJECTIVES = (
    "Silent", "Crimson", "Last", "Hidden", "Broken", "Golden", "Midnight", "Lost", "Electric", "Wild",
    "Quiet", "Burning", "Frozen", "Secret", "Distant", "Iron", "Paper", "Velvet", "Hollow", "Bright",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Empire", "Garden", "Signal", "Horizon", "Circus", "Island", "Letter", "Machine", "River",
    "Kingdom", "Station", "Mirror", "Orchard", "Frontier", "Lantern", "Voyage", "Summit", "Carnival", "Archive",
)  # fmt: skip
_PLOTS = {
    "Action": "a chase across three cities",
    "Comedy": "a family reunion that goes wrong",
    "Drama": "two siblings rebuilding a farm",
    "Horror": "a house that remembers its guests",
    "Romance": "strangers who keep missing each other",
    "Sci-Fi": "a crew waking up far from home",
    "Thriller": "a witness who cannot stop talking",
    "Animation": "a small robot looking for its maker",
    "Documentary": "the people who keep a city running",
    "Fantasy": "a map that redraws itself",
    "Mystery": "a missing painting and five suspects",
    "Western": "a town waiting for the railroad",
}
_REVIEWS = {
    5: ("Loved it. {genre} done exactly the way I like.", "A new favourite; the {genre} parts are superb."),
    4: ("Really good, the {genre} side works well.", "Enjoyed it a lot, solid {genre}."),
    3: ("It was fine. Some {genre} moments, nothing special.", "Watchable but forgettable {genre}."),
    2: ("Not for me. Too much {genre} and it drags.", "Disappointing; the {genre} felt tired."),
    1: ("Could not stand it. I dislike this kind of {genre}.", "A waste of time; {genre} at its worst."),
}


def generate_synthetic(
    num_users: int = 300,
    num_items: int = 150,
    ratings_per_user: int = 25,
    seed: int = 0,
    taste_strength: float = 1.6,
    noise: float = 0.45,
) -> InteractionData:
    """Build the synthetic set deterministically from `seed` (same arguments -> same data)."""
    if num_users < 1 or num_items < 2 or ratings_per_user < 1:
        raise ValueError("synthetic data needs num_users >= 1, num_items >= 2 and ratings_per_user >= 1")
    rng = random.Random(seed)
    items = _make_items(rng, num_items)
    item_list = list(items.values())
    item_bias = {it.item_id: rng.gauss(0.0, 0.45) for it in item_list}
    popularity = [rng.paretovariate(1.5) for _ in item_list]
    mu, start, day = 3.55, 1_600_000_000, 86_400
    interactions: list[Interaction] = []
    for u in range(num_users):
        user = str(u + 1)
        tastes = {g: rng.gauss(0.0, 1.0) for g in GENRES}
        bias = rng.gauss(0.0, 0.4)
        count = min(num_items, max(1, int(rng.gauss(ratings_per_user, ratings_per_user / 4))))
        chosen = _weighted_sample(rng, item_list, popularity, count)
        t = start + rng.randrange(0, 200 * day)
        for item in chosen:
            t += rng.randrange(day // 4, 6 * day)
            affinity = sum(tastes[g] for g in item.genres) / len(item.genres)
            raw = mu + bias + item_bias[item.item_id] + taste_strength * affinity / 2.0 + rng.gauss(0.0, noise)
            rating = int(min(5, max(1, round(raw))))
            liked = (
                max(item.genres, key=lambda g: tastes[g]) if rating >= 3 else min(item.genres, key=lambda g: tastes[g])
            )
            review = rng.choice(_REVIEWS[rating]).format(genre=liked.lower())
            interactions.append(
                Interaction(user=user, item=item.item_id, rating=float(rating), timestamp=t, review=review)
            )
    interactions.sort(key=lambda x: (x.timestamp, x.user, x.item))
    return InteractionData(name=f"synthetic(seed={seed})", interactions=interactions, items=items, scale=SCALES["1-5"])


def _make_items(rng: random.Random, num_items: int) -> dict[str, Item]:
    items: dict[str, Item] = {}
    titles: set[str] = set()
    for i in range(num_items):
        genres = tuple(rng.sample(GENRES, rng.choice((1, 2, 2, 3))))
        year = rng.randrange(1960, 2024)
        title = f"The {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"
        while f"{title} ({year})" in titles:
            title = f"{title} {rng.choice(('II', 'Returns', 'Again', 'Reborn'))}"
        titles.add(f"{title} ({year})")
        description = f"A {genres[0].lower()} story about {_PLOTS[genres[0]]}."
        item_id = str(i + 1)
        items[item_id] = Item(
            item_id=item_id, title=f"{title} ({year})", genres=genres, description=description, year=year
        )
    return items


def _weighted_sample(rng: random.Random, population: list[Item], weights: list[float], k: int) -> list[Item]:
    """k distinct items, more popular ones more likely (Efraimidis-Spirakis keys)."""
    keyed = sorted(range(len(population)), key=lambda i: rng.random() ** (1.0 / weights[i]), reverse=True)
    return [population[i] for i in keyed[:k]]
