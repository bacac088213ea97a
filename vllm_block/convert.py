"""Original research checkpoints (itsnamgyu/block-transformer) -> HF directory.

The original code keeps its config in a hydra yaml (`conf/trainer/*.yaml`)
whose decoders override the `EleutherAI/pythia-410m-deduped` config, and its
weights under the original module names. The output is a plain Hugging Face
directory (`config.json`, `model.safetensors`, `generation_config.json`,
tokenizer files) that `AutoModelForCausalLM` and vLLM both load.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import ALIGNMENTS, ARCHITECTURE, DECODER_DEFAULTS, BlockTransformerConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# What this project implements of the original options; anything else is refused.
SUPPORTED_OPTIONS: dict[str, tuple[Any, ...]] = {
    "block_split.distribution": ("fixed",),
    "embedder.cls": ("lookup",),
    "embedder.projection_method": ("concat", "projection_layer"),
    "embedder.n_embedding_tokens": (1,),
    "block_decoder.cls": ("gpt-neo-x",),
    "token_decoder.cls": ("gpt-neo-x",),
    "token_decoder.expansion_method": ("expansion_layer",),
    "token_decoder.decoding_strategy": ("prefix", "summation"),
}
# conf/eval/eval_multiple_ckpt.yaml of the original code: the released
# checkpoints "with >= 300M parameters" were trained without first-block
# padding (their yamls leave random_pad_first_block out) and are evaluated
# with eval_no_pad. Counted as the two decoders' non-embedding parameters,
# the paper's model sizes (block_main_b4_300: 302M, block_main_b4_85: 85M).
NOPAD_MIN_PARAMETERS = 300_000_000
# options the original code has no working default for (null there means no
# expansion layer / an invalid strategy); the others default as it does
REQUIRED_OPTIONS = ("token_decoder.expansion_method", "token_decoder.decoding_strategy")
BASE_MODEL = "EleutherAI/pythia-410m-deduped"
# decoder `config:` keys that only matter in training
IGNORED_DECODER_KEYS = {"attention_dropout", "hidden_dropout", "classifier_dropout",
                        "initializer_range", "use_cache", "torch_dtype",
                        "tie_word_embeddings", "bos_token_id", "eos_token_id",
                        "rope_scaling", "attention_bias"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.jinja")


class ConversionError(ValueError):
    """A checkpoint or config this converter cannot turn into a model."""


def _get(tree: dict, dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def config_from_yaml(original: dict, alignment: str | None = None) -> BlockTransformerConfig:
    """Build the config from a parsed original yaml; refuse unsupported options.

    `alignment` ("pad" / "nopad") overrides the one read off the yaml
    (`trained_alignment`)."""
    _refuse_non_block(original)
    _refuse_unsupported(original)
    kwargs = _top_level_kwargs(original)
    kwargs["vocab_size"] = _apply_decoder_overrides(original, kwargs)
    for key in ("block_length", "prefix_length", "vocab_size"):
        if kwargs[key] is None:
            raise ConversionError(f"config.yaml does not give {key}")
    _fit_block_positions(kwargs)
    padded = original.get("random_pad_first_block")
    if padded is not None and not isinstance(padded, bool):
        raise ConversionError(
            f"random_pad_first_block must be true or false, got {padded!r}")
    if alignment is not None and alignment not in ALIGNMENTS:
        raise ConversionError(
            f"unsupported alignment {alignment!r} (supported: {', '.join(ALIGNMENTS)})")
    try:
        cfg = BlockTransformerConfig(architectures=[ARCHITECTURE], **kwargs)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"invalid config: {e}") from e
    cfg.alignment = alignment or trained_alignment(padded, cfg)
    return cfg


def _refuse_non_block(original: Any) -> None:
    """A yaml that is no mapping, or a vanilla model's (which vLLM serves
    itself), is refused before any option is read."""
    if not isinstance(original, dict):
        raise ConversionError("config.yaml must hold a mapping at top level")
    if "block_length" not in original and "model" in original:
        raise ConversionError(
            f"config.yaml has no block_length: it is a vanilla (token-level) "
            f"{original['model']!r} config, not a Block Transformer; vLLM serves "
            f"those checkpoints with its own GPTNeoXForCausalLM")


def _refuse_unsupported(original: dict) -> None:
    """Refuse, by name, every option this package does not implement: the
    `SUPPORTED_OPTIONS` values, missing sections, decoders not based on
    `BASE_MODEL`, a block split of another length than block_length."""
    for option, supported in SUPPORTED_OPTIONS.items():
        value = _get(original, option)
        if (value is not None or option in REQUIRED_OPTIONS) and value not in supported:
            raise ConversionError(
                f"unsupported option {option}: {value!r} (supported: "
                f"{', '.join(map(repr, supported))})")
    for section in ("embedder", "block_decoder", "token_decoder"):
        if not isinstance(original.get(section), dict):
            raise ConversionError(f"config.yaml has no section {section!r}")
    for dec in ("block_decoder", "token_decoder"):
        base = _get(original, f"{dec}.model_name_or_path")
        if base not in (None, BASE_MODEL):
            raise ConversionError(
                f"unsupported option {dec}.model_name_or_path: {base!r} "
                f"(supported: {BASE_MODEL!r})")
    L = original.get("block_length")
    split_len = _get(original, "block_split.distribution_kwargs.length")
    if split_len is not None and split_len != L:
        raise ConversionError(
            f"block_split.distribution_kwargs.length ({split_len!r}) differs from "
            f"block_length ({L!r})")


def _top_level_kwargs(original: dict) -> dict[str, Any]:
    """The config's model-wide fields (block and prefix length, embedder,
    context, decoding strategy), before the decoders' own."""
    L = original.get("block_length")
    strategy = _get(original, "token_decoder.decoding_strategy")
    kwargs: dict[str, Any] = {
        "block_length": L,
        "prefix_length": _expansion_ratio(original, strategy, L),
        "embedder_hidden_size": _get(original, "embedder.config.hidden_size"),
        "max_position_embeddings": original.get("max_length", 2048),
        "embedder_projection": _get(original, "embedder.projection_method") or "concat",
        "decoding_strategy": strategy,
    }
    if strategy == "summation":  # its start token: the token decoder's bos (else eos)
        for key in ("bos_token_id", "eos_token_id"):
            start = _get(original, f"token_decoder.config.{key}")
            if start is not None:
                kwargs["bos_token_id"] = start
                break
    return kwargs


def _expansion_ratio(original: dict, strategy: Any, L: Any) -> Any:
    """The prefix length R: `expansion_ratio`, which summation fixes to L."""
    ratio = _get(original, "token_decoder.expansion_ratio")
    if strategy != "summation":
        return ratio
    # the original asserts expansion_ratio == block_length (its default)
    if ratio is not None and ratio != L:
        raise ConversionError(
            f"token_decoder.expansion_ratio ({ratio!r}) must equal block_length "
            f"({L!r}) for token_decoder.decoding_strategy summation")
    return L


def _apply_decoder_overrides(original: dict, kwargs: dict[str, Any]) -> Any:
    """Copy each decoder's `config:` overrides of the base model into
    `kwargs` (as block_* / token_*) and return the one vocabulary size the
    embedder and both decoders must agree on; training-only keys are skipped,
    any other key is refused."""
    vocab = _get(original, "embedder.config.vocab_size")
    for dec, short in (("block_decoder", "block"), ("token_decoder", "token")):
        overrides = _get(original, f"{dec}.config") or {}
        if not isinstance(overrides, dict):
            raise ConversionError(f"{dec}.config must be a mapping")
        for key, value in overrides.items():
            if key == "vocab_size":
                if vocab is not None and value != vocab:
                    raise ConversionError(
                        f"{dec}.config.vocab_size ({value!r}) differs from "
                        f"embedder.config.vocab_size ({vocab!r})")
                vocab = value
            elif key in DECODER_DEFAULTS:
                kwargs[f"{short}_{key}"] = value
            elif key not in IGNORED_DECODER_KEYS or (key == "rope_scaling" and value):
                raise ConversionError(f"unsupported option {dec}.config.{key}: {value!r}")
    return vocab


def _fit_block_positions(kwargs: dict[str, Any]) -> None:
    """Serve at most as many tokens as the block decoder has positions for,
    counting the open block: with block_length 1 that is max_length - 1."""
    L, limit = kwargs["block_length"], kwargs["max_position_embeddings"]
    blocks = kwargs.get("block_max_position_embeddings",
                        DECODER_DEFAULTS["max_position_embeddings"])
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 2
           for v in (limit, blocks)) and isinstance(L, int) and L >= 1:
        kwargs["max_position_embeddings"] = min(limit, (blocks - 2) * L + 1)


def decoder_parameters(config: BlockTransformerConfig) -> int:
    """Non-embedding parameters of the two decoders (the paper's model size)."""
    from .reference import checkpoint_shapes

    return sum(shape.numel() for key, shape in checkpoint_shapes(config).items()
               if key.startswith(("block_decoder.", "token_decoder.")))


def trained_alignment(random_pad_first_block: bool | None,
                      config: BlockTransformerConfig) -> str:
    """The layout the original checkpoint was trained with.

    An explicit `random_pad_first_block` decides. Absent, the original code
    (util/config.py at 17842dd) defaults it to true, except that the released
    checkpoints with >= 300M parameters were trained before that default
    existed, without padding (conf/eval/eval_multiple_ckpt.yaml).
    """
    if random_pad_first_block is not None:
        return "pad" if random_pad_first_block else "nopad"
    return "nopad" if decoder_parameters(config) >= NOPAD_MIN_PARAMETERS else "pad"


# original key prefix -> our key prefix (first match wins, in both directions)
RENAMES = [
    ("embedder.embeddings.", "embedder."),
    ("embedder.projection_layer.", "embed_projection."),
    ("block_decoder.gpt_neox.", "block_decoder."),
    ("token_decoder.gpt_neox.embed_in.", "token_embed."),
    ("token_decoder.gpt_neox.", "token_decoder."),
    ("token_decoder.expansion_layer.", "expansion."),
    ("token_decoder.embed_out.", "lm_head."),
]


def _rename(key: str, table: list[tuple[str, str]] = RENAMES) -> str | None:
    """Original key -> our key; None for keys the model never uses."""
    if key == "block_decoder.gpt_neox.embed_in.weight":
        return None  # exists in the original checkpoint, never used by forward()
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _original_name(key: str) -> str:
    """Our key -> the original key (for messages)."""
    return _rename(key, [(new, old) for old, new in RENAMES])


def convert_state_dict(original: dict[str, torch.Tensor],
                       config: BlockTransformerConfig,
                       dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Rename and reshape the original weights; check them against `config`."""
    from .reference import checkpoint_shapes

    expected = checkpoint_shapes(config)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        new = _rename(key)
        if new is None:
            continue
        if new not in expected:
            raise ConversionError(f"unexpected key in checkpoint: {key}")
        if new == "expansion.weight" and tensor.dim() == 3:
            if tensor.shape[-1] != 1:
                raise ConversionError(
                    f"{key}: expansion_layer must be a kernel-1 Conv1d, got shape "
                    f"{tuple(tensor.shape)}")
            tensor = tensor[..., 0]  # Conv1d(kernel 1) == Linear
        if new == "embed_projection.weight" and tensor.dim() == 3:
            if tensor.shape[-1] != config.block_length:
                raise ConversionError(
                    f"{key}: projection_layer must be a Conv1d with kernel block_length "
                    f"({config.block_length}), got shape {tuple(tensor.shape)}")
            # Conv1d(E, D, kernel = stride = L) over [E, L] == Linear over the
            # block's embeddings joined token by token: [D, E, L] -> [D, L*E]
            tensor = tensor.permute(0, 2, 1).reshape(tensor.shape[0], -1)
        if tensor.shape != expected[new]:
            raise ConversionError(
                f"shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                f"the config implies {tuple(expected[new])}")
        if not tensor.is_floating_point():
            raise ConversionError(f"{key} has non-floating dtype {tensor.dtype}")
        converted[new] = tensor.to(dtype).contiguous()
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise ConversionError(f"missing key in checkpoint: {_original_name(missing[0])}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return converted


def _find_config(src: Path, config: Path | None) -> Path:
    path = config or src / "config.yaml"
    if not path.is_file():
        raise ConversionError(f"no original config at {path} (pass --config)")
    return path


def _summary(e: Exception) -> str:
    """One line about a library's (often multi-line) read error."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and e.problem and mark is not None:
        return f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(e, pickle.UnpicklingError):
        return "UnpicklingError: the file is corrupted or holds more than tensors"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def load_original_weights(src: Path) -> dict[str, torch.Tensor]:
    """Read model.safetensors or pytorch_model.bin from `src` (a dir or file)."""
    if src.is_file():
        candidates = [src]
    else:
        candidates = [src / "model.safetensors", src / "pytorch_model.bin"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                return load_file(str(path))
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupted or truncated files
            raise ConversionError(f"cannot read checkpoint {path}: {_summary(e)}") from e
        if isinstance(state, dict) and "module" in state and isinstance(state["module"], dict):
            state = state["module"]  # deepspeed wrapper
        if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(f"{path} does not hold a state dict of tensors")
        return state
    raise ConversionError(f"no model.safetensors or pytorch_model.bin in {src}")


def convert(src: str | os.PathLike, out: str | os.PathLike, *,
            config: str | os.PathLike | None = None,
            tokenizer: str | os.PathLike | None = None,
            dtype: str = "float32", alignment: str | None = None) -> Path:
    """Convert an original checkpoint at `src` into a HF directory `out`.

    `alignment` ("pad" / "nopad") overrides the layout read off the config
    (`trained_alignment`); it is written to config.json.

    Writes into a temporary directory beside `out` and renames it at the
    end, so a failed conversion leaves nothing behind.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise ConversionError(f"checkpoint {src} does not exist")
    if dtype not in DTYPES:
        raise ConversionError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"output directory {out} exists and is not empty")
    cfg_path = _find_config(src if src.is_dir() else src.parent,
                            Path(config) if config else None)
    try:
        original_cfg = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise ConversionError(f"cannot parse {cfg_path}: {_summary(e)}") from e
    cfg = config_from_yaml(original_cfg, alignment)
    cfg.dtype = dtype
    weights = convert_state_dict(load_original_weights(src), cfg, DTYPES[dtype])

    tok_files: list[Path] = []
    if tokenizer is not None:
        tok_dir = Path(tokenizer)
        tok_files = [tok_dir / f for f in TOKENIZER_FILES if (tok_dir / f).is_file()]
        if not any(f.name == "tokenizer.json" for f in tok_files):
            raise ConversionError(f"no tokenizer.json in tokenizer directory {tok_dir}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg.to_json_file(str(tmp / "config.json"), use_diff=False)
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
                      "pad_token_id": cfg.pad_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        for f in tok_files:
            shutil.copy(f, tmp / f.name)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
