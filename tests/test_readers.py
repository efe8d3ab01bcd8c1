"""Readers and sources: every public format from tiny fixture files, and every kind of bad input.

Fixtures are written into tmp_path after the public formats (never copied from real dumps). Two
tests read the real MovieLens-100K and ml-latest-small under /work/shared/data when present.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pytest

from reczero.data import readers
from reczero.data.readers import (
    read_amazon_2018,
    read_amazon_2023,
    read_generic,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
    read_yelp,
)
from reczero.data.schema import SCALES, DataFormatError
from reczero.data.sources import FORMATS, SourceConfig, detect_format, load_source, source_files

SHARED = Path(os.environ.get("RECZERO_SHARED_DATA", "/work/shared/data"))


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text if isinstance(text, bytes) else text.encode(encoding)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def assert_names(err: pytest.ExceptionInfo, path: Path, line: int | None, field: str | None = None) -> None:
    """The error names the file, the line and the field, in its attributes and its message."""
    e = err.value
    assert isinstance(e, DataFormatError)
    assert e.path == str(path) and str(path) in str(e)
    assert e.line == line
    if line is not None:
        assert f"line {line}" in str(e)
    if field is not None:
        assert e.field == field and repr(field) in str(e)


# ---------------------------------------------------------------- fixtures after the public formats

GENRE_FLAGS = "|".join(["0"] * 8) + "|1|0|0|0|1|0|0|0|0|0|0"  # Drama, Musical


def ml100k(tmp_path: Path, data: str | None = None, item: bytes | None = None, genre: bool = True) -> Path:
    root = tmp_path / "ml-100k"
    write(
        root / "u.data",
        data if data is not None else "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n",
    )
    if item is None:
        item = (
            f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{GENRE_FLAGS}\n"
            f"302|Misérables, Les (1995)|01-Jan-1995||http://x|{GENRE_FLAGS}\n"
            f"999|Never Rated (1990)|01-Jan-1990||http://x|{GENRE_FLAGS}\n"
        ).encode("latin-1")
    write(root / "u.item", item)
    if genre:
        names = list(readers.ML100K_GENRES)
        write(root / "u.genre", "".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
    return root


def ml_dat(tmp_path: Path, ratings: str, movies: str, encoding: str, users: bool = False) -> Path:
    root = tmp_path / "ml-dat"
    write(root / "ratings.dat", ratings)
    write(root / "movies.dat", movies, encoding)
    if users:
        write(root / "users.dat", "1::F::1::10::48067\n")
    return root


def ml_csv(tmp_path: Path, ratings: str | None = None, movies: str | bytes | None = None) -> Path:
    root = tmp_path / "ml-latest"
    write(
        root / "ratings.csv",
        ratings
        if ratings is not None
        else "userId,movieId,rating,timestamp\n1,11,4.5,964982703\n1,73,0.5,964981247\n2,11,3.0,964982224\n",
    )
    movies = (
        movies
        if movies is not None
        else 'movieId,title,genres\n11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '73,"Misérables, Les (1995)",Drama|War\n5,Untitled,(no genres listed)\n'
    )
    write(root / "movies.csv", movies)
    return root


AMAZON_2018 = [
    {
        "reviewerID": "A1",
        "asin": "B01",
        "overall": 5.0,
        "summary": "Great album",
        "reviewText": "Loved it.",
        "unixReviewTime": 1252800000,
    },
    {
        "reviewerID": "A2",
        "asin": "B01",
        "overall": 2.0,
        "summary": "Meh!",
        "reviewText": "Too long.",
        "unixReviewTime": 1252900000,
    },
    {"reviewerID": "A1", "asin": "B02", "overall": 4.0, "reviewText": "No summary here.", "reviewTime": "09 13, 2009"},
]
AMAZON_2018_META = [
    {
        "asin": "B01",
        "title": "Blue Train",
        "description": ["Hard bop.", "1957."],
        "category": ["CDs & Vinyl", "Jazz"],
        "brand": "John Coltrane",
        "price": "$9.99",
    },
    {"asin": "B99", "title": "Unrated", "description": "x", "category": [], "price": ".a-box{display:block}" * 5},
]
AMAZON_2023 = [
    {
        "user_id": "U1",
        "parent_asin": "P1",
        "asin": "X1",
        "rating": 5.0,
        "title": "Superb",
        "text": "A classic.",
        "timestamp": 1588687728923,
    },
    {"user_id": "U2", "parent_asin": "P1", "rating": 3.0, "title": "", "text": "Fine.", "timestamp": 1588687729000},
]
AMAZON_2023_META = [
    {"parent_asin": "P1", "title": "Kind of Blue", "features": ["Remastered", "Bonus track"], "description": ["Modal jazz."],
     "categories": ["Jazz"], "store": "Miles Davis", "price": 12.5, "main_category": "Digital Music"},
]  # fmt: skip
YELP_REVIEWS = [
    {
        "review_id": "r1",
        "user_id": "u1",
        "business_id": "b1",
        "stars": 4.0,
        "text": "Great tacos.",
        "date": "2018-07-07 22:09:11",
    },
    {
        "review_id": "r2",
        "user_id": "u2",
        "business_id": "b2",
        "stars": 1,
        "text": "Cold.",
        "date": "2012-01-03 15:28:18",
    },
]
YELP_BUSINESS = [
    {"business_id": "b1", "name": "Taco Town", "categories": "Mexican, Restaurants", "city": "Tucson", "state": "AZ", "stars": 4.5,
     "attributes": {"RestaurantsPriceRange2": "2"}},
    {"business_id": "b2", "name": "Diner", "categories": None, "city": "Reno", "stars": 2.0, "attributes": None},
]  # fmt: skip


def yelp(tmp_path: Path, reviews: str | None = None, business: str | None = None) -> Path:
    root = tmp_path / "yelp"
    write(root / "yelp_academic_dataset_review.json", reviews if reviews is not None else jsonl(YELP_REVIEWS))
    write(root / "yelp_academic_dataset_business.json", business if business is not None else jsonl(YELP_BUSINESS))
    return root


# ---------------------------------------------------------------- every reader on good input


def test_movielens_100k(tmp_path):
    data = read_movielens_100k(ml100k(tmp_path))
    assert data.scale == SCALES["1-5"] and data.skipped_rows == 0 and data.name == "movielens-100k"
    first = data.interactions[0]
    assert (first.user, first.item, first.rating, first.timestamp, first.review) == (
        "196",
        "242",
        3.0,
        881250949,
        None,
    )
    assert set(data.items) == {"242", "302"}  # metadata of never-rated items is not kept
    assert data.items["302"].title == "Misérables, Les (1995)"
    assert data.items["302"].genres == ("Drama", "Musical") and data.items["302"].year == 1995
    # repeated ids are interned: one string object per id
    assert data.interactions[0].item is data.interactions[2].item


def test_movielens_100k_without_u_genre_uses_the_standard_names(tmp_path):
    data = read_movielens_100k(ml100k(tmp_path, genre=False))
    assert data.items["242"].genres == ("Drama", "Musical")


def test_movielens_100k_year_from_release_date_and_missing_metadata(tmp_path):
    item = f"242|Kolya|24-Jan-1997||u|{GENRE_FLAGS}\n".encode("latin-1")
    data = read_movielens_100k(ml100k(tmp_path, item=item))
    assert data.items["242"].year == 1997
    assert "302" not in data.items and data.item("302").title == "item 302"  # kept, with a stand-in


def test_movielens_1m_latin1(tmp_path):
    root = ml_dat(
        tmp_path,
        "1::1193::5::978300760\n2::73::3::978302109\n",
        "1193::One Flew (1975)::Drama\n73::Misérables, Les (1995)::Drama|Musical\n",
        "latin-1",
        users=True,
    )
    data = read_movielens_dat(root)
    assert data.scale == SCALES["1-5"] and data.name == "movielens-1m"
    assert data.items["73"].title == "Misérables, Les (1995)" and data.items["73"].genres == ("Drama", "Musical")
    assert detect_format(root) == "movielens-1m"


def test_movielens_10m_utf8_half_stars(tmp_path):
    root = ml_dat(
        tmp_path,
        "1::73::4.5::1100000000\n1::5::0.5::1100000001\n",
        "73::Misérables, Les (1995)::Drama\n5::X (2000)::(no genres listed)\n",
        "utf-8",
    )
    data = read_movielens_dat(root, ten_m=True)
    assert data.scale == SCALES["0.5-5"] and [r.rating for r in data.interactions] == [4.5, 0.5]
    assert data.items["73"].title == "Misérables, Les (1995)" and data.items["5"].genres == ()
    assert detect_format(root) == "movielens-10m"


def test_encoding_is_chosen_per_whole_file(tmp_path):
    # utf-8 on line 1, one latin-1 byte on line 2: the whole file is latin-1, not a per-line mix
    movies = "73::Misérables (1995)::Drama\n".encode() + "5::Caf\xe9 (2000)::Drama\n".encode("latin-1")
    root = ml_dat(tmp_path, "1::73::4::1\n1::5::4::2\n", "", "utf-8")
    write(root / "movies.dat", movies)
    data = read_movielens_dat(root, ten_m=True)
    assert data.items["5"].title == "Café (2000)"
    assert data.items["73"].title == "MisÃ©rables (1995)"  # deterministic: latin-1 for all of it


def test_movielens_csv_quoting_and_half_stars(tmp_path):
    data = read_movielens_csv(ml_csv(tmp_path))
    assert data.scale == SCALES["0.5-5"] and [r.rating for r in data.interactions] == [4.5, 0.5, 3.0]
    assert data.items["11"].title == "American President, The (1995)"
    assert data.items["11"].genres == ("Comedy", "Drama", "Romance") and data.items["73"].year == 1995
    assert set(data.items) == {"11", "73"}


def test_amazon_2018_plain_and_gzip(tmp_path):
    for suffix in ("", ".gz"):
        reviews = write(tmp_path / f"Music{suffix and '.json.gz' or '.json'}", jsonl(AMAZON_2018))
        meta = write(tmp_path / f"meta_Music.json{suffix}", jsonl(AMAZON_2018_META))
        data = read_amazon_2018(reviews, meta)
        assert data.name == "amazon-2018:Music" and data.scale == SCALES["1-5"]
        a, b, c = data.interactions
        assert a.review == "Great album. Loved it." and b.review == "Meh! Too long." and c.review == "No summary here."
        assert c.timestamp == 1252800000  # from reviewTime '09 13, 2009', UTC midnight
        item = data.items["B01"]
        assert (item.title, item.brand, item.price, item.genres) == (
            "Blue Train",
            "John Coltrane",
            "$9.99",
            ("CDs & Vinyl", "Jazz"),
        )
        assert item.description == "Hard bop. 1957."
        assert "B02" not in data.items and "B99" not in data.items  # no metadata / never rated


def test_amazon_2018_junk_price_is_dropped(tmp_path):
    reviews = write(tmp_path / "r.json", jsonl([dict(AMAZON_2018[0], asin="B99")]))
    data = read_amazon_2018(reviews, write(tmp_path / "m.json", jsonl(AMAZON_2018_META)))
    assert data.items["B99"].price is None and data.items["B99"].description == "x"


def test_amazon_2023_milliseconds_and_metadata(tmp_path):
    reviews = write(tmp_path / "Digital_Music.jsonl.gz", jsonl(AMAZON_2023))
    meta = write(tmp_path / "meta_Digital_Music.jsonl", jsonl(AMAZON_2023_META))
    data = read_amazon_2023(reviews, meta)
    a, b = data.interactions
    assert (a.user, a.item, a.timestamp, a.review) == ("U1", "P1", 1588687728, "Superb. A classic.")
    assert b.review == "Fine." and b.timestamp == 1588687729
    item = data.items["P1"]
    assert (item.brand, item.price, item.genres) == ("Miles Davis", "12.5", ("Jazz",))
    assert item.description == "Modal jazz. Features: Remastered; Bonus track"


def test_yelp(tmp_path):
    data = read_yelp(yelp(tmp_path))
    a, b = data.interactions
    assert (a.user, a.item, a.rating, a.review) == ("u1", "b1", 4.0, "Great tacos.")
    assert a.timestamp == 1531001351  # 2018-07-07 22:09:11 UTC
    taco = data.items["b1"]
    assert (taco.title, taco.genres, taco.price, taco.description) == (
        "Taco Town",
        ("Mexican", "Restaurants"),
        "$$",
        "Located in Tucson, AZ.",
    )
    assert data.items["b2"].genres == () and data.items["b2"].description == "Located in Reno."


def test_generic_csv_mapping_iso_time_and_items(tmp_path):
    src = write(
        tmp_path / "ratings.csv",
        'uid,movie,score,when,text\n7,m1,8,2020-01-02T03:04:05Z,"good, long\n\nreview"\n8,m2,10,1577934245,\n',
    )
    items = write(tmp_path / "items.csv", "id,name,tags,cost\nm1,Film One (1999),Drama|War,3\nm9,Unrated,Drama,1\n")
    data = read_generic(
        src,
        {"user": "uid", "item": "movie", "rating": "score", "timestamp": "when", "review": "text"},
        items_path=items,
        item_columns={"item": "id", "title": "name", "genres": "tags", "price": "cost"},
    )
    a, b = data.interactions
    assert (a.user, a.item, a.rating, a.timestamp, a.review) == ("7", "m1", 8.0, 1577934245, "good, long\n\nreview")
    assert b.review is None and b.timestamp == 1577934245
    assert data.scale == SCALES["1-10"]  # detected
    assert (
        data.items["m1"].genres == ("Drama", "War") and data.items["m1"].year == 1999 and data.items["m1"].price == "3"
    )
    assert set(data.items) == {"m1"}


def test_generic_csv_sniffs_tab_and_defaults_to_own_names(tmp_path):
    src = write(tmp_path / "r.tsv", "user\titem\trating\n1\ta\t4\n2\ta\t5\n")
    data = read_generic(src)
    assert [(r.user, r.rating, r.timestamp) for r in data.interactions] == [
        ("1", 4.0, 2),
        ("2", 5.0, 3),
    ]  # line = time
    assert data.scale == SCALES["1-5"]


def test_generic_jsonl_types_and_declared_scale(tmp_path):
    rows = [{"u": 1, "i": 10, "r": 3.5, "t": 5, "txt": "ok"}, {"u": 2, "i": 10, "r": 5, "t": 6}]
    src = write(tmp_path / "r.jsonl.gz", jsonl(rows))
    items = write(tmp_path / "items.jsonl", jsonl([{"item": 10, "title": "Ten", "genres": ["A", "B"], "year": 2001}]))
    data = read_generic(
        src,
        {"user": "u", "item": "i", "rating": "r", "timestamp": "t", "review": "txt"},
        items_path=items,
        scale="1-5",
    )
    assert [(r.user, r.item, r.rating, r.review) for r in data.interactions] == [
        ("1", "10", 3.5, "ok"),
        ("2", "10", 5.0, None),
    ]
    assert data.scale == SCALES["1-5"] and data.items["10"].genres == ("A", "B") and data.items["10"].year == 2001
    assert read_generic(src, {"user": "u", "item": "i", "rating": "r"}).scale == SCALES["0.5-5"]


def test_max_rows_and_declared_scale(tmp_path):
    root = ml100k(tmp_path)
    assert len(read_movielens_100k(root, max_rows=2).interactions) == 2
    assert read_movielens_100k(root, scale="1-10").scale == SCALES["1-10"]


# ---------------------------------------------------------------- bad input: strict errors name file, line, field


def test_wrong_column_count_or_delimiter(tmp_path):
    root = ml100k(tmp_path, data="196\t242\t3\t881250949\n186 302 3 891717742\n")
    with pytest.raises(DataFormatError, match="4 tab-separated columns") as err:
        read_movielens_100k(root)
    assert_names(err, root / "u.data", 2)


@pytest.mark.parametrize(
    ("ratings", "line", "field", "expected"),
    [
        ("userId,movieId,rating,timestamp\n1,2,4.0,5\n1,2,four,5\n", 3, "rating", "a number"),
        ("userId,movieId,rating,timestamp\n1,2,5.5,5\n", 2, "rating", "0.5-5 scale"),
        ("userId,movieId,rating,timestamp\n1,2,nan,5\n", 2, "rating", "finite"),
        ("userId,movieId,rating,timestamp\n,2,4,5\n", 2, "userId", "an id"),
        ("userId,movieId,rating,timestamp\n1,2,4,yesterday\n", 2, "timestamp", "unix seconds"),
        ("userId,movieId,rating,timestamp\n1,2,4,1588687728923\n", 2, "timestamp", "milliseconds"),
        ("userId,movieId,rating,timestamp\n1,2,4,-3\n", 2, "timestamp", "non-negative"),
        ("userId,movieId,rating,timestamp\n1,2,4\n", 2, None, "4 comma-separated columns"),
        ("userId;movieId;rating;timestamp\n1;2;4;5\n", 1, "header", "header userId,movieId,rating,timestamp"),
        ('userId,movieId,rating,timestamp\n1,"2"x,4,5\n', 2, None, "well-formed CSV"),
        ('userId,"movieId,rating,timestamp\n1,2,4,5\n', 1, "header", "header userId,movieId"),  # broken quote
    ],
)
def test_bad_csv_rows_name_file_line_field(tmp_path, ratings, line, field, expected):
    root = ml_csv(tmp_path, ratings=ratings)
    with pytest.raises(DataFormatError, match=expected) as err:
        read_movielens_csv(root)
    assert_names(err, root / "ratings.csv", line, field)


@pytest.mark.parametrize(
    ("row", "field", "expected"),
    [
        ("not json", None, "invalid JSON"),
        ('["a JSON array"]', None, "a JSON object per line"),
        ("{'reviewerID': 'A1'}", None, "Python dict literal"),
        ({"reviewerID": "A", "asin": "B", "overall": [5], "unixReviewTime": 1}, "overall", "a number"),
        ({"reviewerID": "A", "asin": "B", "overall": "five", "unixReviewTime": 1}, "overall", "a number"),
        ({"reviewerID": "A", "asin": "B", "overall": True, "unixReviewTime": 1}, "overall", "a number"),
        ({"reviewerID": "A", "asin": "B", "overall": 0, "unixReviewTime": 1}, "overall", "1-5 scale"),
        ({"asin": "B", "overall": 4, "unixReviewTime": 1}, "reviewerID", "an id"),
        ({"reviewerID": {"x": 1}, "asin": "B", "overall": 4, "unixReviewTime": 1}, "reviewerID", "an id"),
        ({"reviewerID": "A", "asin": "B", "overall": 4}, "unixReviewTime", "unix seconds"),
        ({"reviewerID": "A", "asin": "B", "overall": 4, "unixReviewTime": "soon"}, "unixReviewTime", "unix seconds"),
        ({"reviewerID": "A", "asin": "B", "overall": 4, "reviewTime": "13/09/2009"}, "reviewTime", "a date"),
        ({"reviewerID": "A", "asin": "B", "overall": 4, "unixReviewTime": 1, "summary": ["x"]}, "summary", "a string"),
    ],
)
def test_bad_json_rows_name_file_line_field(tmp_path, row, field, expected):
    text = jsonl(AMAZON_2018[:1]) + "\n" + (row if isinstance(row, str) else json.dumps(row)) + "\n"
    src = write(tmp_path / "reviews.json", text)
    with pytest.raises(DataFormatError, match=expected) as err:
        read_amazon_2018(src)
    assert_names(err, src, 3, field)  # line 2 is blank: blank lines are not rows but still count as lines


def test_bad_metadata_rows(tmp_path):
    reviews = write(tmp_path / "r.jsonl", jsonl(AMAZON_2023))
    meta = write(tmp_path / "m.jsonl", jsonl([{"parent_asin": "P1", "categories": "Jazz", "features": {"a": 1}}]))
    with pytest.raises(DataFormatError, match="a list of strings") as err:
        read_amazon_2023(reviews, meta)
    assert_names(err, meta, 1, "features")
    business = jsonl([{"business_id": "b1", "name": ["x"]}])
    root = yelp(tmp_path, business=business)
    with pytest.raises(DataFormatError, match="a string") as err:
        read_yelp(root)
    assert_names(err, root / "yelp_academic_dataset_business.json", 1, "name")
    bad_flag = f"242|Kolya (1996)|||u|{GENRE_FLAGS[:-1]}x\n".encode()
    root = ml100k(tmp_path / "a", item=bad_flag)
    with pytest.raises(DataFormatError, match="0 or 1") as err:
        read_movielens_100k(root)
    assert_names(err, root / "u.item", 1, "genre flag Western")
    root = ml_dat(tmp_path / "b", "1::2::3::4\n", "2::Title only\n", "utf-8")
    with pytest.raises(DataFormatError, match="3 '::'-separated columns") as err:
        read_movielens_dat(root)
    assert_names(err, root / "movies.dat", 1)


def test_yelp_bad_date(tmp_path):
    root = yelp(tmp_path, reviews=jsonl([dict(YELP_REVIEWS[0], date="07/07/2018")]))
    with pytest.raises(DataFormatError, match="unix seconds or an ISO date") as err:
        read_yelp(root)
    assert_names(err, root / "yelp_academic_dataset_review.json", 1, "date")


def test_declared_scale_is_checked_on_every_row(tmp_path):
    root = ml100k(tmp_path, data="1\t242\t3\t1\n2\t242\t5\t1\n")
    with pytest.raises(DataFormatError, match="on the 1-4 scale") as err:
        read_movielens_100k(root, scale="1-4")
    assert_names(err, root / "u.data", 2, "rating")
    data = read_movielens_100k(root, scale="1-4", on_bad_row="skip")
    assert len(data.interactions) == 1 and data.skipped_rows == 1


def test_undecodable_file_names_line_and_encoding(tmp_path):
    root = ml_csv(tmp_path, movies=b"movieId,title,genres\n11,Ok (1995),Drama\n12,Caf\xe9,Drama\n")
    with pytest.raises(DataFormatError, match="utf-8") as err:
        read_movielens_csv(root)
    assert_names(err, root / "movies.csv", 3)
    src = write(tmp_path / "r.jsonl", b'{"user": "a", "item": "b", "rating": 3}\n\xff\xfe\n')
    with pytest.raises(DataFormatError, match="encoded as utf-8") as err:
        read_generic(src)
    assert_names(err, src, 2)


def test_truncated_gzip(tmp_path):
    blob = gzip.compress(jsonl(AMAZON_2018 * 200).encode())
    src = tmp_path / "r.json.gz"
    src.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="gzip") as err:
        read_amazon_2018(src)
    assert err.value.path == str(src) and err.value.line is not None and f"line {err.value.line}" in str(err.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n", "userId,movieId,rating,timestamp\n"])
def test_empty_files(tmp_path, content):
    root = ml_csv(tmp_path, ratings=content)
    with pytest.raises(DataFormatError, match="at least one data row") as err:
        read_movielens_csv(root)
    assert_names(err, root / "ratings.csv", None)


def test_metadata_file_empty(tmp_path):
    reviews = write(tmp_path / "r.json", jsonl(AMAZON_2018))
    meta = write(tmp_path / "m.json", "")
    with pytest.raises(DataFormatError, match="at least one data row") as err:
        read_amazon_2018(reviews, meta)
    assert_names(err, meta, None)


def test_missing_files_name_paths_and_format(tmp_path):
    root = tmp_path / "ml"
    write(root / "u.data", "1\t2\t3\t4\n")
    with pytest.raises(FileNotFoundError, match="movielens-100k") as err:
        read_movielens_100k(root)
    assert str(root / "u.item") in str(err.value)
    with pytest.raises(FileNotFoundError, match="ratings.dat.*missing") as err:
        read_movielens_dat(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="yelp.*review.json"):
        read_yelp(root)
    with pytest.raises(FileNotFoundError, match=r"amazon-2018.*nope\.json"):
        read_amazon_2018(tmp_path / "nope.json")
    reviews = write(tmp_path / "r.json", jsonl(AMAZON_2018))
    with pytest.raises(FileNotFoundError, match=r"metadata.*meta\.json"):
        read_amazon_2018(reviews, tmp_path / "meta.json")


def test_generic_header_and_mapping_errors(tmp_path):
    src = write(tmp_path / "r.csv", "uid,movie,score\n1,a,4\n")
    with pytest.raises(DataFormatError, match="a header naming") as err:
        read_generic(src, {"user": "uid", "item": "item_id", "rating": "score"})
    assert_names(err, src, 1, "header")
    with pytest.raises(ValueError, match="unknown field"):
        read_generic(src, {"user": "uid", "item": "movie", "rating": "score", "stars": "x"})
    with pytest.raises(ValueError, match="required field"):
        read_generic(src, {"user": "uid", "item": "movie"})
    bad = write(tmp_path / "b.csv", "uid,movie,score\n1,a,4\n2,b\n")
    with pytest.raises(DataFormatError, match="3 ','-separated columns") as err:
        read_generic(bad, {"user": "uid", "item": "movie", "rating": "score"})
    assert_names(err, bad, 3)
    unclosed = write(tmp_path / "u.csv", 'user,item,rating,review\n1,a,4,"never closed\n2,b,5,x\n')
    with pytest.raises(DataFormatError, match="closing quote") as err:
        read_generic(unclosed, on_bad_row="skip")  # no safe place to resume: fatal even in skip mode
    assert_names(err, unclosed, 2)
    odd = write(tmp_path / "o.csv", "user,item,rating\n1,a,-7\n2,b,400\n")
    with pytest.raises(DataFormatError, match="fits no known scale") as err:
        read_generic(odd)
    assert_names(err, odd, None, "rating")


def test_generic_timestamp_and_item_errors(tmp_path):
    src = write(tmp_path / "r.jsonl", jsonl([{"user": 1, "item": 2, "rating": 3, "timestamp": [1]}]))
    with pytest.raises(DataFormatError, match="unix seconds") as err:
        read_generic(src)
    assert_names(err, src, 1, "timestamp")
    src = write(tmp_path / "r2.jsonl", jsonl([{"user": 1, "item": 2, "rating": 3}]))
    items = write(tmp_path / "i.csv", "item,title,year\n2,Two,soon\n")
    with pytest.raises(DataFormatError, match="a year") as err:
        read_generic(src, items_path=items)
    assert_names(err, items, 2, "year")


# ---------------------------------------------------------------- skip mode: exact counts and one warning per file


def test_skip_counts_exactly_and_warns_once_per_file(tmp_path, caplog):
    ratings = "userId,movieId,rating,timestamp\n1,11,4,1\nbad\n1,73,9,1\n\n2,11,x,1\n2,73,3,2\n"
    movies = 'movieId,title,genres\n11,"A, The (1990)",Drama\n"broken\n73,B (1991),War\n'
    root = ml_csv(tmp_path, ratings=ratings, movies=movies)
    with caplog.at_level(logging.WARNING, logger="reczero.data.readers"):
        data = read_movielens_csv(root, on_bad_row="skip")
    assert len(data.interactions) == 2 and data.skipped_rows == 3 + 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "ratings.csv: skipped 3 bad row(s), kept 2" in warnings[0] and "line 3" in warnings[0]
    assert "movies.csv: skipped 1 bad row(s)" in warnings[1]


def test_skip_mode_with_no_valid_row_is_an_error(tmp_path):
    src = write(tmp_path / "r.json", "[1]\n{}\n")
    with pytest.raises(DataFormatError, match="at least one valid row.*2 bad rows") as err:
        read_amazon_2018(src, on_bad_row="skip")
    assert_names(err, src, None)


def test_on_bad_row_is_validated(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        read_movielens_100k(ml100k(tmp_path), on_bad_row="ignore")


# ---------------------------------------------------------------- sources


def test_source_config_validation():
    with pytest.raises(ValueError, match="unknown; known formats: synthetic, auto, movielens-100k"):
        SourceConfig(format="netflix", path="x")
    with pytest.raises(ValueError, match="needs a path"):
        SourceConfig(format="yelp")
    with pytest.raises(ValueError, match="on_bad_row"):
        SourceConfig(format="yelp", path="x", on_bad_row="warn")
    with pytest.raises(ValueError, match="rating scale"):
        SourceConfig(format="yelp", path="x", scale="five")
    with pytest.raises(ValueError, match="columns"):
        SourceConfig(format="yelp", path="x", columns={"user": "u"})
    with pytest.raises(ValueError, match="items_path"):
        SourceConfig(format="movielens-100k", path="x", items_path="y")
    assert set(FORMATS) >= {"movielens-100k", "amazon-2023", "jsonl"}


def test_sources_dispatch_detect_and_files(tmp_path):
    root = ml100k(tmp_path)
    for fmt in ("movielens-100k", "auto"):
        cfg = SourceConfig(format=fmt, path=str(root), max_rows=2)
        assert len(load_source(cfg).interactions) == 2
        assert source_files(cfg) == [root / "u.data", root / "u.item", root / "u.genre"]
    assert detect_format(ml_csv(tmp_path)) == "movielens-csv"
    assert detect_format(yelp(tmp_path)) == "yelp"
    r18 = write(tmp_path / "a18.json.gz", jsonl(AMAZON_2018))
    r23 = write(tmp_path / "a23.jsonl", jsonl(AMAZON_2023))
    assert detect_format(r18) == "amazon-2018" and detect_format(r23) == "amazon-2023"
    assert detect_format(write(tmp_path / "g.csv", "user,item,rating\n1,2,3\n")) == "csv"
    meta = write(tmp_path / "m.jsonl", jsonl(AMAZON_2023_META))
    cfg = SourceConfig(format="auto", path=str(r23), items_path=str(meta))
    assert load_source(cfg).items["P1"].title == "Kind of Blue" and source_files(cfg) == [r23, meta]
    txt = write(tmp_path / "ratings.txt", jsonl([{"user": 1, "item": 2, "rating": 4}]))
    assert load_source(SourceConfig(format="jsonl", path=str(txt))).interactions[0].item == "2"  # format beats suffix
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(tmp_path)
    with pytest.raises(FileNotFoundError, match="movielens-csv"):
        source_files(SourceConfig(format="movielens-csv", path=str(root)))


# ---------------------------------------------------------------- the real public dumps, when present


@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").exists(), reason="MovieLens-100K not present")
def test_real_movielens_100k():
    data = load_source(SourceConfig(format="movielens-100k", path=str(SHARED / "ml-100k")))
    assert len(data.interactions) == 100_000 and data.skipped_rows == 0
    assert len({r.user for r in data.interactions}) == 943 and len(data.items) == 1682
    assert data.items["543"].title == "Misérables, Les (1995)"


@pytest.mark.skipif(not (SHARED / "ml-latest-small" / "ratings.csv").exists(), reason="ml-latest-small not present")
def test_real_movielens_latest_small():
    data = load_source(SourceConfig(format="auto", path=str(SHARED / "ml-latest-small")))
    assert len(data.interactions) == 100_836 and data.scale == SCALES["0.5-5"]
    assert {r.rating for r in data.interactions} == {x / 2 for x in range(1, 11)}
    assert data.items["73"].title == "Misérables, Les (1995)"
