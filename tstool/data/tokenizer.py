"""Training and loading byte-level BPE tokenizers (HF `tokenizers`), with a content hash for caching."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tstool.atomic import replacing, write_text
from tstool.errors import TokenizerError

EOT = "<|endoftext|>"
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "resources" / "tokenizer"


@dataclass(frozen=True)
class TextTokenizer:
    """A loaded tokenizer plus what the rest of tstool needs to know about it."""

    backend: Tokenizer
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.backend.to_str().encode("utf-8")).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        token_id = self.backend.token_to_id(EOT)
        if token_id is None:
            raise TokenizerError(
                f"tokenizer {self.source} has no {EOT} token: retrain it with `tstool tokenizer train` "
                f"or add {EOT} as a special token"
            )
        return token_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes in parallel (Rust threads)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token(self, token_id: int) -> str:
        """The text one token decodes to (byte-level symbols turned back into text)."""
        return self.decode([token_id])

    def save(self, directory: Path) -> Path:
        """Write tokenizer.json through a temporary file, so a crash never leaves a truncated one."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "tokenizer.json"
        with replacing(path) as tmp:
            self.backend.save(str(tmp))
        return path


def prepare_backend(backend: Tokenizer, source: str) -> Tokenizer:
    """`backend` set to encode whole texts (no truncation or padding), once checked that its IDs fit its size."""
    backend.no_truncation()
    backend.no_padding()
    # IDs index the model's embedding (vocab_size rows) and the token cache, whose dtype is chosen from
    # vocab_size: a hand-edited tokenizer.json with an ID past the vocab would overflow both silently.
    size = backend.get_vocab_size(with_added_tokens=True)
    top = max(backend.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= size:
        raise TokenizerError(
            f"tokenizer {source} has token ID {top} but a vocab size of {size}, too large for its embedding and "
            f"token cache: renumber its tokens 0..{size - 1} or retrain it with `tstool tokenizer train`"
        )
    return backend


def _finish(backend: Tokenizer, source: str) -> TextTokenizer:
    return TextTokenizer(backend=prepare_backend(backend, source), source=source)


def _load_json(path: Path) -> TextTokenizer:
    try:
        raw = path.read_text(encoding="utf-8")
        json.loads(raw)
        backend = Tokenizer.from_str(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TokenizerError(f"{path} is not a JSON tokenizer file: pass a tokenizer.json written by HF tokenizers")
    except Exception as exc:  # the Rust side raises plain Exception for malformed tokenizers
        raise TokenizerError(
            f"{path} could not be loaded as a tokenizer ({str(exc).splitlines()[0]}): pass a valid tokenizer.json"
        )
    return _finish(backend, str(path))


def _load_gpt2_files(vocab: Path, merges: Path) -> TextTokenizer:
    """GPT-2 style vocab.json + merges.txt, set up as GPT-2 itself is (byte-level, no prefix space)."""
    try:
        backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:
        raise TokenizerError(
            f"{vocab.parent} holds vocab.json/merges.txt that could not be read ({exc}): check the files"
        )
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    if backend.token_to_id(EOT) is not None:
        backend.add_special_tokens([EOT])
    return _finish(backend, str(vocab.parent))


def load_tokenizer(spec: str | Path | None = None) -> TextTokenizer:
    """Load from a tokenizer.json, a folder with one, or a folder with vocab.json + merges.txt.

    None means the tokenizer shipped with tstool (trained on the bundled TinyStories sample).
    """
    path = Path(spec) if spec is not None else SHIPPED_DIR
    if path.is_file():
        return _load_json(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _load_json(path / "tokenizer.json")
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return _load_gpt2_files(path / "vocab.json", path / "merges.txt")
        raise TokenizerError(
            f"{path} holds neither tokenizer.json nor vocab.json + merges.txt: point --tokenizer at one"
        )
    raise TokenizerError(
        f"tokenizer {path} does not exist: pass a tokenizer.json, a folder with one, or GPT-2 vocab/merges"
    )


def train_tokenizer(stories: Iterator[str] | list[str], vocab_size: int, show_progress: bool = True) -> TextTokenizer:
    """Byte-level BPE with <|endoftext|> as its only special token (it separates stories)."""
    if vocab_size < 256 + 1:
        raise TokenizerError(f"vocab size {vocab_size} is below 257 (256 bytes + {EOT}): choose at least 257")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(stories, trainer=trainer)
    return _finish(backend, "trained")


def write_meta(tokenizer: TextTokenizer, directory: Path, trained_on: str) -> Path:
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "sha256": tokenizer.sha256,
        "eot_id": tokenizer.eot_id,
        "trained_on": trained_on,
    }
    path = directory / "tokenizer_meta.json"
    write_text(path, json.dumps(meta, indent=2) + "\n")
    return path
