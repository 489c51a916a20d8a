"""Any causal language model that `transformers` loads, behind the interface tstool's analyses use.

DESIGN's one seam for models: analyses ask a model for logits of token IDs (optionally through a KV
cache), its context length and vocabulary size, and ask its tokenizer what `TextTokenizer` offers.
`HFCausalLM` and `HFTokenizer` give a transformers model and its tokenizer that interface, so eval,
generate, compare and every probe work on a GPT-2, GPT-Neo or Llama model tstool never trained.

A model is named by a local folder (config.json, weights, tokenizer files) or a hub model id, looked
up in the Hugging Face cache (which is all there is with HF_HUB_OFFLINE=1). Nothing in a model folder
ever runs: `trust_remote_code` is always False and a config asking for its own code (`auto_map`) is
refused; weights load from safetensors, or from pickled .bin files only through torch's weights_only
unpickler (transformers' default, which it allows from torch 2.6 on).

transformers is an optional dependency, imported only when such a model is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from tstool.config import Config, ModelConfig, TrainConfig
from tstool.data.tokenizer import TextTokenizer, load_tokenizer, prepare_backend
from tstool.errors import CheckpointError, TokenizerError

ORIGIN = "transformers"  # meta["origin"] of a model loaded here; tstool checkpoints have none
CONFIG = "config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# Files that make up a transformers tokenizer, fast or slow: what its sha256 hashes.
TOKENIZER_FILES = (
    "tokenizer.json",
    TOKENIZER_CONFIG,
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
SAFE_WEIGHTS = "*.safetensors"
PICKLED_WEIGHTS = "pytorch_model*.bin"
HUB_METADATA = ("*.json", "*.txt", "*.model")  # config and tokenizer files of a hub model
# Evaluation blocks and the generation window are the model's context, up to this many tokens: long
# enough for whole TinyStories, short enough for a CPU.
EVAL_CONTEXT = 512
# Logits (batch x block x vocab floats) of one evaluation batch: 256 MiB in float32, a few copies of
# which the metrics make, so a 50k-token vocabulary evaluates two 512-token blocks at a time.
LOGITS_BUDGET = 2**26
MAX_BATCH = 32
# Config keys that hold a model's context length, by architecture (GPT-2: n_positions).
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len")
ANCHOR = "x"  # decoded before the IDs asked for and cut off after: see `HFTokenizer.decode`


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "loading a transformers model needs the transformers package: pip install 'tstool[hf]' (or transformers)"
        ) from None
    return transformers


@contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """transformers' progress bars, log messages and warnings off while it loads: tstool reports what
    matters, and an error stays the one line the CLI prints."""
    logging = transformers.utils.logging
    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]


# ---- naming a model --------------------------------------------------------------------------------


def is_hub_id(text: str) -> bool:
    """Whether `text` is spelled like a hub model id ("gpt2", "roneneldan/TinyStories-1M")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _snapshot(repo_id: str, patterns: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import is_offline_mode
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except (HfHubHTTPError, HFValidationError, OSError) as exc:  # OSError: LocalEntryNotFoundError, network
        where = (
            "nor a model in the Hugging Face cache (offline, HF_HUB_OFFLINE=1)"
            if is_offline_mode()
            else f"nor a model the Hugging Face Hub serves ({_first_line(exc)})"
        )
        raise CheckpointError(
            f"{repo_id} does not exist: it is no local folder, {where}: pass a local folder or a hub model id"
        ) from None


def locate(spec: str, weights: bool = True) -> Path:
    """The folder `spec` names: a local folder as it is; a hub model id as its snapshot in the Hugging
    Face cache, fetched when online (config and tokenizer files, and the weights when `weights`:
    safetensors, or pickled .bin files only when there are no safetensors)."""
    path = Path(spec)
    if path.is_dir():
        return path
    folder = _snapshot(spec, HUB_METADATA)
    if weights and not any(folder.glob(SAFE_WEIGHTS)):
        folder = _snapshot(spec, (SAFE_WEIGHTS,))
        if not any(folder.glob(SAFE_WEIGHTS)):
            folder = _snapshot(spec, (PICKLED_WEIGHTS,))
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc.__class__.__name__}): the model folder is damaged")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object: the model folder is damaged")
    return data


def _refuse_remote_code(path: Path) -> None:
    if "auto_map" in _read_json(path):
        raise CheckpointError(
            f"{path} asks to run code shipped with the model (auto_map), which tstool never does "
            "(trust_remote_code=False): use a model whose architecture transformers itself provides"
        )


# ---- the tokenizer -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFTokenizer(TextTokenizer):
    """A transformers tokenizer with TextTokenizer's interface.

    `backend` is its `tokenizers` pipeline (a slow tokenizer's files converted, as AutoTokenizer does),
    so encoding gives the IDs transformers gives and the statistics that read encoding offsets work
    unchanged. Stories are separated by its end-of-sequence token.
    """

    eos_id: int
    files_sha256: str
    size: int  # the vocabulary: the model's, once loaded with one (its embedding may have spare rows)
    anchor: tuple[int, ...]  # ANCHOR's tokens
    anchor_text: str  # what they decode to

    @property
    def sha256(self) -> str:
        return self.files_sha256

    @property
    def vocab_size(self) -> int:
        return self.size

    @property
    def eot_id(self) -> int:
        return self.eos_id

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` as it reads inside a longer text. SentencePiece decoders drop the space that
        starts a text ("▁a" alone reads "a"), which would glue a continuation to its prompt: so the IDs are
        decoded after ANCHOR's tokens, whose text is then cut off."""
        ids = list(ids)
        text = self.backend.decode([*self.anchor, *ids], skip_special_tokens=False)
        if text.startswith(self.anchor_text):
            return text[len(self.anchor_text) :]
        return self.backend.decode(ids, skip_special_tokens=False)


def files_sha256(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}\0".encode())
            digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def is_transformers_tokenizer(spec: str) -> bool:
    """A folder of transformers tokenizer files (tokenizer_config.json or a SentencePiece model) or a hub id."""
    path = Path(spec)
    if path.is_dir():
        return (path / TOKENIZER_CONFIG).is_file() or (path / "tokenizer.model").is_file()
    return not path.exists() and is_hub_id(spec)


def _check_tokenizer_folder(folder: Path, source: str) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES if name != TOKENIZER_CONFIG):
        raise TokenizerError(
            f"{source} holds no tokenizer (none of tokenizer.json, vocab.json + merges.txt, tokenizer.model): "
            "save the model's tokenizer beside it with tokenizer.save_pretrained(folder)"
        )
    if (folder / TOKENIZER_CONFIG).is_file():
        _refuse_remote_code(folder / TOKENIZER_CONFIG)


def _backend(hf_tokenizer: Any, source: str) -> Tokenizer:
    """The tokenizer's `tokenizers` pipeline. AutoTokenizer builds one from a slow tokenizer's files
    (vocab.json + merges.txt, a SentencePiece model) wherever transformers has a converter for them."""
    if not getattr(hf_tokenizer, "is_fast", False):
        raise TokenizerError(
            f"tokenizer {source} ({type(hf_tokenizer).__name__}) is a pure-Python tokenizer that transformers "
            "cannot convert to a fast one, whose encodings tstool reads: save it as tokenizer.json"
        )
    return hf_tokenizer.backend_tokenizer


def load_hf_tokenizer(spec: str) -> HFTokenizer:
    """The transformers tokenizer of a folder or hub id, through AutoTokenizer (never remote code)."""
    folder = locate(spec, weights=False)
    _check_tokenizer_folder(folder, spec)
    transformers = _transformers()
    try:
        with _quiet(transformers):
            loaded = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for unusable files
        raise TokenizerError(f"tokenizer {spec} could not be loaded by transformers ({_first_line(exc)})") from None
    if loaded.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer {spec} has no end-of-sequence token, which tstool puts between stories: set eos_token"
        )
    backend = prepare_backend(_backend(loaded, spec), spec)
    anchor = tuple(backend.encode(ANCHOR, add_special_tokens=False).ids)
    return HFTokenizer(
        backend=backend,
        source=spec,
        eos_id=int(loaded.eos_token_id),
        files_sha256=files_sha256(folder),
        size=backend.get_vocab_size(with_added_tokens=True),
        anchor=anchor,
        anchor_text=backend.decode(list(anchor), skip_special_tokens=False),
    )


def load_any_tokenizer(spec: str | None) -> TextTokenizer:
    """A transformers tokenizer (`is_transformers_tokenizer`), or else one `load_tokenizer` reads."""
    if spec is not None and is_transformers_tokenizer(spec):
        return load_hf_tokenizer(spec)
    return load_tokenizer(spec)


# ---- the model ---------------------------------------------------------------------------------------


@dataclass
class HFCache:
    """A transformers model's KV cache, as the model returned it, and how many positions it holds."""

    past: Any = None
    pos: int = 0


class HFCausalLM(nn.Module):
    """A transformers causal LM as tstool's analyses call a model: `model(idx, cache)` gives float logits
    (B, T, V) of tokens idx (B, T) at positions cache.pos onwards, up to `cfg.max_seq_len` positions."""

    def __init__(self, hf_model: nn.Module, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.cfg = cfg
        self.vocab_size = vocab_size
        # the name transformers gives the KV cache, in and out: `cache` in recent releases, before that
        # `past_key_values` (which recent releases still take, with a deprecation warning)
        self.cache_name = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"

    def new_cache(self) -> HFCache:
        return HFCache()

    def forward(self, idx: torch.Tensor, cache: HFCache | None = None) -> torch.Tensor:
        start = cache.pos if cache is not None else 0
        if start + idx.size(1) > self.cfg.max_seq_len:
            raise ValueError(
                f"input reaches position {start + idx.size(1)} but the model is used with a context of "
                f"max_seq_len={self.cfg.max_seq_len}: crop the input to the last max_seq_len tokens"
            )
        # Without a cache the model builds none: evaluation needs only the logits.
        past = {self.cache_name: cache.past} if cache is not None else {}
        out = self.hf_model(input_ids=idx, use_cache=cache is not None, **past)
        if cache is not None:
            cache.past, cache.pos = getattr(out, self.cache_name), start + idx.size(1)
        return out.logits.float()


def model_context(hf_config: Any) -> int | None:
    return next((v for key in CONTEXT_KEYS if isinstance(v := getattr(hf_config, key, None), int) and v > 0), None)


def analysis_config(context: int | None, vocab_size: int) -> Config:
    """The settings a transformers model is analysed with: the bundled data (tstool's default data
    section), article weight 1 (its training weight is unknown, so it is never corrected), blocks of
    its context up to EVAL_CONTEXT tokens, and evaluation batches within LOGITS_BUDGET."""
    seq_len = min(context or EVAL_CONTEXT, EVAL_CONTEXT)
    batch = max(1, min(MAX_BATCH, LOGITS_BUDGET // (seq_len * vocab_size)))
    return Config(model=ModelConfig(max_seq_len=seq_len), train=TrainConfig(article_weight=1.0, batch_size=batch))


@dataclass(frozen=True)
class ModelFolder:
    """A transformers model folder that passed every check that reads no weights."""

    spec: str  # as the user named it
    folder: Path
    hf_config: Any  # its transformers PretrainedConfig
    tokenizer: str  # where its tokenizer comes from: the model itself, or the one given

    @property
    def context(self) -> int | None:
        return model_context(self.hf_config)

    @property
    def config(self) -> Config:
        return analysis_config(self.context, int(self.hf_config.vocab_size))

    @property
    def meta(self) -> dict[str, Any]:
        # step 0: tstool trained it for no steps; the origin tells it from a tstool checkpoint
        return {"step": 0, "origin": ORIGIN, "model_type": self.hf_config.model_type, "context": self.context}


def _causal_config(folder: Path, spec: str) -> Any:
    transformers = _transformers()
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        with _quiet(transformers):
            hf_config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # an unknown model_type is a ValueError, a damaged file an OSError
        raise CheckpointError(f"{spec}: transformers cannot read its {CONFIG} ({_first_line(exc)})") from None
    if type(hf_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise CheckpointError(
            f"{spec} is a {hf_config.model_type} model, not a causal language model (transformers has no "
            "AutoModelForCausalLM for it): pass a text generation model such as GPT-2, GPT-Neo or Llama"
        )
    return hf_config


def _check_weights(folder: Path, spec: str) -> None:
    if any(folder.glob(SAFE_WEIGHTS)):
        return
    if not any(folder.glob(PICKLED_WEIGHTS)):
        raise CheckpointError(f"{spec} holds no model weights (model.safetensors or pytorch_model.bin)")
    if torch.__version__ < (2, 6):
        raise CheckpointError(
            f"{spec} has pickled .bin weights, which torch before 2.6 cannot load safely (CVE-2025-32434): "
            "upgrade torch, or convert the weights to safetensors"
        )


def check_model(spec: str, tokenizer: str | None = None) -> ModelFolder:
    """Everything about a transformers model that can be checked without loading its weights: that it
    exists, asks for no code of its own, is a causal LM, has weights tstool may load and a tokenizer
    (its own, or `tokenizer`, a folder or hub id)."""
    folder = locate(spec)
    if not (folder / CONFIG).is_file():
        raise CheckpointError(f"{spec} holds no {CONFIG}: pass a transformers model folder or a tstool run")
    _refuse_remote_code(folder / CONFIG)
    hf_config = _causal_config(folder, spec)
    _check_weights(folder, spec)
    if tokenizer is None:
        _check_tokenizer_folder(folder, spec)
    return ModelFolder(spec, folder, hf_config, tokenizer or spec)


def _load_weights(found: ModelFolder) -> nn.Module:
    transformers = _transformers()
    try:
        with _quiet(transformers):
            hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
                found.folder,
                config=found.hf_config,
                trust_remote_code=False,
                local_files_only=True,
                weights_only=True,  # .bin files through torch's weights_only unpickler, never plain pickle
                output_loading_info=True,
            )
    except Exception as exc:  # damaged or hostile weights: OSError, UnpicklingError, RuntimeError, ...
        raise CheckpointError(f"{found.spec}: its weights could not be loaded ({_first_line(exc)})") from None
    missing = [*info.get("missing_keys", ()), *(str(m[0]) for m in info.get("mismatched_keys", ()))]
    if missing:
        raise CheckpointError(
            f"{found.spec}: its weights do not fit its config ({', '.join(sorted(missing)[:3])} missing or "
            "misshapen): the folder is damaged"
        )
    return hf_model.float().eval()


def _fit_vocab(tokenizer: HFTokenizer, vocab_size: int, spec: str) -> HFTokenizer:
    """The tokenizer with the model's vocabulary size, which its IDs must fit."""
    if tokenizer.size > vocab_size:
        raise TokenizerError(
            f"tokenizer {tokenizer.source} has {tokenizer.size} tokens but {spec} has {vocab_size} embeddings: "
            "pass the tokenizer the model was trained with"
        )
    return dataclasses.replace(tokenizer, size=vocab_size)


def load_transformers(
    spec: str, device: torch.device, tokenizer: str | None = None
) -> tuple[HFCausalLM, HFTokenizer, Config, dict[str, Any], Path]:
    """A transformers causal LM on `device`, in float32 and eval mode, with its tokenizer (or `tokenizer`),
    the config it is analysed with (`analysis_config`), its meta and its folder."""
    found = check_model(spec, tokenizer)
    text_tokenizer = load_hf_tokenizer(found.tokenizer)
    config, vocab_size = found.config, int(found.hf_config.vocab_size)
    text_tokenizer = _fit_vocab(text_tokenizer, vocab_size, spec)
    model = HFCausalLM(_load_weights(found), config.model, vocab_size).to(device)
    return model, text_tokenizer, config, found.meta, found.folder
