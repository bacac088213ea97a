"""Training data for the demo model: the King James Bible, a byte-level BPE.

Corpus: Debian's `bible-kjv` package (text in `bible-kjv-text`, public
domain; `apt-get install bible-kjv`). Its `bible` program prints the whole
text, one verse a line, with `bible -f Gen1:1-Rev22:21` ("Ge1:1 In the
beginning ..."). `kjv_chapters()` turns that into 1189 chapters, each a
document of verses joined by newlines (verse numbers dropped).

Split: every 20th chapter (chapter index i with i % 20 == 19, counted over
the whole Bible in order) is held out for validation, about 5% of the text.

Tokenizer: byte-level BPE (Hugging Face `tokenizers`) trained on the
training chapters only, `<|endoftext|>` = id 0, which is also pad/bos/eos.
Token stream: each chapter is `<|endoftext|>` followed by its tokens.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EOT = "<|endoftext|>"
KJV_RANGE = "Gen1:1-Rev22:21"
VAL_EVERY = 20
DEFAULT_CACHE = Path("out/data")
VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")

# A Jinja chat template: "User: ...\nAssistant: ...\n" lines; a system message
# is a plain first line. The generation prompt is "Assistant:".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class CorpusError(RuntimeError):
    """The KJV text cannot be produced (package missing, odd output)."""


@dataclass(frozen=True)
class Chapter:
    book: str  # the `bible` program's abbreviation, e.g. "Ge", "1Sm"
    number: int
    text: str  # verses joined by "\n"


def bible_text(bible: str = "bible") -> str:
    """The raw `bible -f` dump of the whole KJV (about 4.4 MB)."""
    exe = shutil.which(bible)
    if exe is None:
        raise CorpusError(
            "the `bible` program is missing: install Debian's bible-kjv package "
            "(apt-get install -y bible-kjv)")
    out = subprocess.run([exe, "-f", KJV_RANGE], check=True, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL).stdout
    return out


def parse_chapters(raw: str) -> list[Chapter]:
    """`bible -f` lines ("Ge1:1 In the beginning ...") -> chapters in order."""
    chapters: list[Chapter] = []
    key, verses = None, []
    for line in raw.splitlines():
        if not line.strip():
            continue
        m = VERSE.match(line)
        if m is None:
            raise CorpusError(f"unexpected line in the bible output: {line[:80]!r}")
        book, ch, text = m.group(1), int(m.group(2)), m.group(4).strip()
        if (book, ch) != key:
            if key is not None:
                chapters.append(Chapter(key[0], key[1], "\n".join(verses)))
            key, verses = (book, ch), []
        verses.append(text)
    if key is not None:
        chapters.append(Chapter(key[0], key[1], "\n".join(verses)))
    return chapters


def kjv_chapters(cache_dir: str | Path = DEFAULT_CACHE) -> list[Chapter]:
    """All 1189 chapters, cached as `cache_dir/kjv.jsonl` after the first call."""
    path = Path(cache_dir) / "kjv.jsonl"
    if path.is_file():
        return [Chapter(**json.loads(line)) for line in path.read_text().splitlines()]
    chapters = parse_chapters(bible_text())
    if len(chapters) != 1189:
        raise CorpusError(f"expected the 1189 chapters of the KJV, got {len(chapters)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(c.__dict__) + "\n" for c in chapters))
    tmp.replace(path)
    return chapters


def split(chapters: list, every: int = VAL_EVERY) -> tuple[list, list]:
    """(train, validation): chapter i is held out when i % every == every - 1."""
    train = [c for i, c in enumerate(chapters) if i % every != every - 1]
    val = [c for i, c in enumerate(chapters) if i % every == every - 1]
    return train, val


def _texts(docs: list) -> list[str]:
    return [d.text if isinstance(d, Chapter) else d for d in docs]


# ---------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------
def train_tokenizer(docs: list, vocab_size: int = 4096):
    """A byte-level BPE `tokenizers.Tokenizer` trained on `docs` (Chapters or
    strings); `<|endoftext|>` is id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(docs), trainer=trainer)
    if tok.token_to_id(EOT) != 0:
        raise CorpusError(f"{EOT} did not get id 0")
    return tok


def save_tokenizer(tok, out_dir: str | Path, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json that AutoTokenizer loads as a
    PreTrainedTokenizerFast with pad/bos/eos = <|endoftext|> and a chat template."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "pad_token": EOT,
        "unk_token": None,
        "model_max_length": model_max_length,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOT, "eos_token": EOT, "pad_token": EOT}, indent=2) + "\n")


def encode_stream(tok, docs: list):
    """1-D int64 tensor: for each document, id 0 (<|endoftext|>) then its tokens."""
    import torch

    ids: list[int] = []
    for enc in tok.encode_batch(_texts(docs), add_special_tokens=False):
        ids.append(0)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)
