"""How long building every sample and prompt of a dataset takes (issue: under a minute for ML-100K).

    python benchmarks/data_build.py --path ../shared/data/ml-100k [--format movielens-100k] [--repeats 3]

The path a training run takes, into a fresh cache folder each repeat: read the source, build every
chronological sample, write the cache and map it back (`setup`, a cache miss); then render + tokenise
every prompt of every split with the bundled model's tokenizer, reading the memory-mapped rows
lazily; then a second DataModule's `setup` on the same folder (a cache hit, what later runs pay).
Prints a table, writes benchmarks/results/data_build_<format>.json. Reports the median over repeats.
`--no-cache` takes the path without the cache (rows held in Python lists), for comparison; it writes
data_build_<format>_no_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

from reczero.data.datamodule import RatingDataModule
from reczero.data.render import prompt_input
from reczero.data.sources import SourceConfig
from reczero.policy.factory import PolicyConfig, load_tokenizer

RESULTS = Path(__file__).parent / "results"


def one_run(fmt: str, path: str, tokenizer, use_cache: bool = True) -> dict:
    source = SourceConfig(format=fmt, path=path)
    with tempfile.TemporaryDirectory(prefix="reczero-bench-") as cache:
        t0 = time.perf_counter()
        dm = RatingDataModule(source=source, cache_dir=cache, use_cache=use_cache)
        dm.setup()
        t1 = time.perf_counter()
        dm.set_tokenizer(tokenizer)
        renderer = dm.renderer
        tokens = []
        for split in ("train", "validation", "test"):
            positions = dm.positions(split)
            for start in range(0, len(positions), 2048):
                inputs = [prompt_input(dm.data, dm.table, p) for p in positions[start : start + 2048]]
                tokens.extend(f.num_tokens for f in renderer.render_many(inputs))
        t2 = time.perf_counter()
        RatingDataModule(source=source, cache_dir=cache, use_cache=use_cache).setup()
        t3 = time.perf_counter()
    return {
        "interactions": len(dm.data.interactions),
        "samples": len(dm.table),
        "prompts": len(tokens),
        "prompt_tokens_mean": statistics.fmean(tokens),
        "shortened": renderer.stats.shortened,
        "read_build_and_cache_s": t1 - t0,
        "render_and_tokenize_s": t2 - t1,
        "total_s": t2 - t0,
        "cache_hit_setup_s": t3 - t2,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--path", required=True)
    ap.add_argument("--format", default="movielens-100k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cache", action="store_true", help="rows in Python lists, no cache (for comparison)")
    args = ap.parse_args()
    tokenizer = load_tokenizer(PolicyConfig())
    runs = [one_run(args.format, args.path, tokenizer, not args.no_cache) for _ in range(args.repeats)]
    median = {
        k: statistics.median(r[k] for r in runs)
        for k in ("read_build_and_cache_s", "render_and_tokenize_s", "total_s", "cache_hit_setup_s")
    }
    result = {
        **{k: runs[0][k] for k in ("interactions", "samples", "prompts", "prompt_tokens_mean", "shortened")},
        "median": median,
        "runs": runs,
        "repeats": args.repeats,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "load_average": __import__("os").getloadavg(),
        "cache": not args.no_cache,
    }
    print(
        "| dataset | interactions | samples (= prompts) | read + build + cache s | render + tokenise s | total s "
        f"| cache-hit setup s (median of {args.repeats}) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.format} | {result['interactions']:,} | {result['samples']:,} | "
        f"{median['read_build_and_cache_s']:.1f} | {median['render_and_tokenize_s']:.1f} | {median['total_s']:.1f} | "
        f"{median['cache_hit_setup_s']:.2f} |"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"data_build_{args.format}{'_no_cache' if args.no_cache else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
