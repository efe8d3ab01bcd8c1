"""Readers for public rating dumps: each turns one format into the common `InteractionData`.

One function per format: MovieLens 100K / 1M / 10M / latest (25M, 32M, small), Amazon Reviews 2018
and 2023, the Yelp Open Dataset, and generic CSV / JSONL with a column mapping. `sources.load_source`
picks one from a `SourceConfig`; the `*_files` functions say which files a format reads.
One module per family (`movielens`, `amazon`, `yelp`, `generic`); `common` (files, lines, strict/skip
bookkeeping, the scale) and `fields` (cell and JSON value parsers) are what they share.

Every reader
- streams its files line by line (gzip when the name ends in `.gz`) and keeps only what goes into
  the common form: ids become interned `str`, and item metadata is kept only for rated items;
- is strict by default: a malformed row raises `DataFormatError` naming the file, the 1-based line,
  the field, what was expected and what was found. With `on_bad_row="skip"` bad rows are dropped,
  counted exactly in `InteractionData.skipped_rows`, and one `logging` warning per file says how many;
- checks every rating against the scale: the declared one, else the format's own (MovieLens 100K/1M,
  Amazon, Yelp 1-5; MovieLens 10M/latest 0.5-5); the generic readers detect it when none is declared;
- rejects an empty file, a file with no valid row, an undecodable file (naming the encodings tried)
  and a missing file (naming the expected paths and the format);
- returns every valid row, repeated (user, item) pairs included, with the line each came from
  (`InteractionData.origin`): `sources.load_source` applies the one duplicate rule to every source.
"""

from reczero.data.readers.amazon import read_amazon_2018, read_amazon_2023
from reczero.data.readers.common import ON_BAD_ROW, existing_file
from reczero.data.readers.generic import read_generic, table_kind
from reczero.data.readers.movielens import (
    ML100K_GENRES,
    movielens_100k_files,
    movielens_csv_files,
    movielens_dat_files,
    read_movielens_100k,
    read_movielens_csv,
    read_movielens_dat,
)
from reczero.data.readers.yelp import read_yelp, yelp_files

__all__ = [
    "ML100K_GENRES",
    "ON_BAD_ROW",
    "existing_file",
    "movielens_100k_files",
    "movielens_csv_files",
    "movielens_dat_files",
    "read_amazon_2018",
    "read_amazon_2023",
    "read_generic",
    "read_movielens_100k",
    "read_movielens_csv",
    "read_movielens_dat",
    "read_yelp",
    "table_kind",
    "yelp_files",
]
