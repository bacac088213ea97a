"""`BlockTransformerConfig`: every default of the architecture, once.

A Block Transformer has two GPT-NeoX decoders. Their hyper-parameters live
in flat fields prefixed `block_` and `token_` (e.g. `block_hidden_size`,
`token_num_attention_heads`), so the config stays a plain Hugging Face
`config.json` that every tool can read. The serving alignment rule also lives
here and nowhere else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

MODEL_TYPE = "block_transformer"
ARCHITECTURE = "BlockTransformerForCausalLM"

# EleutherAI/pythia-410m-deduped: the base config both decoders of the
# original code start from before their yaml overrides are applied.
DECODER_DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 24,
    "hidden_size": 1024,
    "num_attention_heads": None,  # derived from hidden_size, see below
    "intermediate_size": None,  # 4 * hidden_size
    "rotary_pct": 0.25,
    "rotary_emb_base": 10000.0,
    "layer_norm_eps": 1e-5,
    "use_parallel_residual": True,
    "hidden_act": "gelu",
    "max_position_embeddings": 2048,
}
DECODERS = ("block", "token")
SUPPORTED_ACTIVATIONS = ("gelu",)
# how the embedder turns a block's L token embeddings into one block vector:
# "concat" joins them; "projection_layer" maps the joined [L * E] vector with a
# learned linear layer (the original Conv1d(E, D, kernel = stride = L), bias).
EMBEDDER_PROJECTIONS = ("concat", "projection_layer")
# how the token decoder sees the previous block's context (expanded into
# prefix_length vectors): "prefix" puts them before the block's tokens;
# "summation" (MEGABYTE) adds vector i to the input at local position i.
DECODING_STRATEGIES = ("prefix", "summation")


def default_num_attention_heads(hidden_size: int) -> int:
    """Head count the original code uses when the yaml leaves it out."""
    if hidden_size <= 256:
        return max(1, hidden_size // 32)
    if hidden_size <= 1536:
        return hidden_size // 64
    return hidden_size // 128


# ---------------------------------------------------------------------------
# The serving alignment. A request is laid out as `num_pad` virtual pad tokens
# followed by its real tokens, cut into blocks of L; real token p sits at
# padded index p + num_pad. `num_pad` is fixed when the request starts:
#   "pad"   (random_pad_first_block: true): L - 1, so token 0 closes block 0;
#   "nopad" (trained without first-block padding): 0 when the prompt has at
#           least L tokens (block b covers tokens bL .. bL+L-1), else L - T:
#           the prompt is left-padded to exactly one block, as the original
#           generate() does. The pad token is the end-of-text token, so this
#           is also a virtual document boundary, as packed training data has.
# Everything that maps tokens to blocks uses these functions; `num_pad=None`
# means the pad layout (L - 1).
# ---------------------------------------------------------------------------
ALIGNMENTS = ("pad", "nopad")


def virtual_pad_length(alignment: str, block_length: int, prompt_length: int) -> int:
    """Virtual pad tokens before a request whose prompt has `prompt_length` tokens."""
    if alignment == "pad":
        return block_length - 1
    if alignment == "nopad":
        return max(0, block_length - prompt_length)
    raise ValueError(f"unknown alignment {alignment!r} (supported: {', '.join(ALIGNMENTS)})")


def padded_index(position: Any, block_length: int, num_pad: Any = None) -> Any:
    """Index of real token `position` in the virtually padded sequence."""
    return position + (block_length - 1 if num_pad is None else num_pad)


def index_in_block(position: Any, block_length: int, num_pad: Any = None) -> Any:
    """In-block index (0..L-1) of real token `position`; L-1 closes a block."""
    return padded_index(position, block_length, num_pad) % block_length


def num_complete_blocks(num_tokens: Any, block_length: int, num_pad: Any = None) -> Any:
    """Complete blocks among the first `num_tokens` real tokens."""
    return padded_index(num_tokens, block_length, num_pad) // block_length


def window_size(block_length: int, prefix_length: int) -> int:
    """Token-decoder positions of one block's window (the lead positions:
    R prefix vectors, or the 1 start position of "summation", see
    `BlockTransformerConfig.token_lead_length`, and the block's first L-1
    tokens): the token decoder's cache length."""
    return prefix_length + block_length - 1


def num_block_positions(num_tokens: int, block_length: int) -> int:
    """Block indices a sequence of `num_tokens` real tokens uses: its complete
    blocks and the open one (block-decoder rotary positions)."""
    return num_complete_blocks(num_tokens, block_length) + 1


@dataclass(frozen=True)
class DecoderDims:
    """One GPT-NeoX decoder's sizes, as the vLLM layers take them."""
    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    rotary_pct: float
    rope_theta: float
    layer_norm_eps: float
    parallel_residual: bool
    act: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class BlockTransformerConfig(PretrainedConfig):
    """Hyper-parameters of a Block Transformer (Ho et al., 2024).

    `prefix_length` is the original `expansion_ratio`: how many vectors the
    previous block's context is expanded into (prefix vectors for "prefix";
    block_length vectors added to the token inputs for "summation").
    `alignment` ("pad" / "nopad") is how the model was trained to see the
    first block (see `virtual_pad_length`); configs without it are "pad".
    `max_position_embeddings` counts real tokens (the serving limit).
    The generic `hidden_size`, `num_attention_heads` and `num_hidden_layers`
    alias the token decoder, whose output feeds the LM head.
    """

    model_type = MODEL_TYPE
    attribute_map = {
        "hidden_size": "token_hidden_size",
        "num_attention_heads": "token_num_attention_heads",
        "num_hidden_layers": "token_num_hidden_layers",
        "intermediate_size": "token_intermediate_size",
    }

    def __init__(
        self,
        block_length: int = 4,
        prefix_length: int = 2,
        vocab_size: int = 50304,
        embedder_hidden_size: int | None = None,
        max_position_embeddings: int = 2048,
        pad_token_id: int = 0,
        bos_token_id: int = 0,
        eos_token_id: int = 0,
        tie_word_embeddings: bool = False,
        alignment: str = "pad",
        embedder_projection: str = "concat",
        decoding_strategy: str = "prefix",
        **kwargs: Any,
    ) -> None:
        self.block_length = block_length
        self.prefix_length = prefix_length
        self.alignment = alignment
        self.embedder_projection = embedder_projection
        self.decoding_strategy = decoding_strategy
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        for dec in DECODERS:
            for key, default in DECODER_DEFAULTS.items():
                setattr(self, f"{dec}_{key}", kwargs.pop(f"{dec}_{key}", default))
            hidden = getattr(self, f"{dec}_hidden_size")
            if not _is_positive_int(hidden):
                continue  # validate() names the field; derive nothing from it
            if getattr(self, f"{dec}_num_attention_heads") is None:
                setattr(self, f"{dec}_num_attention_heads",
                        default_num_attention_heads(hidden))
            if getattr(self, f"{dec}_intermediate_size") is None:
                setattr(self, f"{dec}_intermediate_size", 4 * hidden)
        if embedder_hidden_size is None and _is_positive_int(block_length) \
                and _is_positive_int(self.block_hidden_size):
            embedder_hidden_size = self.block_hidden_size // block_length
        self.embedder_hidden_size = embedder_hidden_size
        self.pad_token_id, self.bos_token_id = pad_token_id, bos_token_id
        # before the base class's own validators, which fail on wrong types
        # without naming the field
        self.validate()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    # -- derived sizes ------------------------------------------------------
    def decoder_params(self, name: str) -> dict[str, Any]:
        """The GPT-NeoX hyper-parameters of decoder `name` ("block"/"token")."""
        return {k: getattr(self, f"{name}_{k}") for k in DECODER_DEFAULTS}

    def decoder_dims(self, name: str) -> DecoderDims:
        """Decoder `name`'s sizes as a typed record (what the layers take)."""
        d = self.decoder_params(name)
        return DecoderDims(d["num_hidden_layers"], d["hidden_size"], d["num_attention_heads"],
                           d["intermediate_size"], d["rotary_pct"], d["rotary_emb_base"],
                           d["layer_norm_eps"], d["use_parallel_residual"], d["hidden_act"])

    def decoder_head_dim(self, name: str) -> int:
        d = self.decoder_params(name)
        return d["hidden_size"] // d["num_attention_heads"]

    def decoder_rotary_dim(self, name: str) -> int:
        """GPT-NeoX rotates the first int(rotary_pct * head_dim) dims."""
        return int(self.decoder_params(name)["rotary_pct"] * self.decoder_head_dim(name))

    @property
    def token_lead_length(self) -> int:
        """Token-decoder positions before a block's first token: the R prefix
        vectors ("prefix") or one start position ("summation"). The output at
        lead - 1 + i predicts the block's token i."""
        return self.prefix_length if self.decoding_strategy == "prefix" else 1

    @property
    def token_cache_length(self) -> int:
        """Entries the token decoder's cache holds at most: lead + L - 1
        (R + L - 1 for "prefix", L for "summation")."""
        return window_size(self.block_length, self.token_lead_length)

    def virtual_pad(self, prompt_length: int) -> int:
        """Virtual pad tokens before a request of this model (its alignment)."""
        return virtual_pad_length(self.alignment, self.block_length, prompt_length)

    @property
    def usual_virtual_pad(self) -> int:
        """Virtual pad tokens before a prompt of at least one block: every
        request's count but a "nopad" model's shorter prompts'."""
        return self.virtual_pad(self.max_position_embeddings)

    @property
    def max_num_blocks(self) -> int:
        """Block-decoder positions needed for max_position_embeddings tokens."""
        return num_block_positions(self.max_position_embeddings, self.block_length)

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work.

        The checks run in a fixed order (scalars, each decoder, the embedder,
        positions, token ids), so that a later check may rely on the fields
        an earlier one has proved to be positive integers."""
        L = self._positive_int("block_length")
        self._positive_int("prefix_length")
        self._check_choices(L)
        self._positive_int("vocab_size")
        self._positive_int("max_position_embeddings")
        for dec in DECODERS:
            self._check_decoder_sizes(dec)
            self._check_decoder_numbers(dec)
        self._check_embedder(L)
        self._check_positions()
        self._check_token_ids()

    def _positive_int(self, field: str) -> int:
        value = getattr(self, field)
        if not _is_positive_int(value):
            raise ValueError(
                f"BlockTransformerConfig.{field} must be a positive integer, "
                f"got {value!r}")
        return value

    def _check_choices(self, L: int) -> None:
        """The string options are ones this package implements, and summation
        (one start position, L pieces summed) has no prefix of its own length."""
        for field, allowed in (("alignment", ALIGNMENTS),
                               ("embedder_projection", EMBEDDER_PROJECTIONS),
                               ("decoding_strategy", DECODING_STRATEGIES)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"BlockTransformerConfig.{field} must be one of "
                    f"{', '.join(allowed)}, got {getattr(self, field)!r}")
        if self.decoding_strategy == "summation" and self.prefix_length != L:
            raise ValueError(
                f"BlockTransformerConfig.prefix_length ({self.prefix_length}) must "
                f"equal block_length ({L}) for decoding_strategy summation")

    def _check_decoder_sizes(self, dec: str) -> None:
        """Decoder `dec`'s sizes: positive, whole heads, an even rotary slice
        (the rotary kernels rotate pairs of dimensions)."""
        for key in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                    "intermediate_size", "max_position_embeddings"):
            self._positive_int(f"{dec}_{key}")
        hidden = getattr(self, f"{dec}_hidden_size")
        heads = getattr(self, f"{dec}_num_attention_heads")
        if hidden % heads:
            raise ValueError(
                f"BlockTransformerConfig.{dec}_num_attention_heads ({heads}) "
                f"must divide {dec}_hidden_size ({hidden})")
        pct = getattr(self, f"{dec}_rotary_pct")
        if isinstance(pct, bool) or not isinstance(pct, (int, float)) \
                or not 0.0 <= pct <= 1.0:
            raise ValueError(
                f"BlockTransformerConfig.{dec}_rotary_pct must be in [0, 1], "
                f"got {pct!r}")
        if self.decoder_rotary_dim(dec) % 2:
            raise ValueError(
                f"BlockTransformerConfig.{dec}_rotary_pct gives an odd rotary "
                f"dimension ({self.decoder_rotary_dim(dec)}); it must be even")

    def _check_decoder_numbers(self, dec: str) -> None:
        """Decoder `dec`'s other hyper-parameters: positive floats, an
        activation the layers implement, a boolean residual layout."""
        for key in ("rotary_emb_base", "layer_norm_eps"):
            value = getattr(self, f"{dec}_{key}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value > 0:
                raise ValueError(
                    f"BlockTransformerConfig.{dec}_{key} must be a positive "
                    f"number, got {value!r}")
        act = getattr(self, f"{dec}_hidden_act")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"BlockTransformerConfig.{dec}_hidden_act {act!r} is not "
                f"supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")
        if not isinstance(getattr(self, f"{dec}_use_parallel_residual"), bool):
            raise ValueError(
                f"BlockTransformerConfig.{dec}_use_parallel_residual must be "
                f"true or false")

    def _check_embedder(self, L: int) -> None:
        """With "concat" the block decoder's input is the L token embeddings
        side by side, so its width must be L times the embedder's."""
        concat = self.embedder_projection == "concat"
        if concat and self.block_hidden_size % L:
            raise ValueError(
                f"BlockTransformerConfig.block_hidden_size ({self.block_hidden_size}) "
                f"must be divisible by block_length ({L})")
        self._positive_int("embedder_hidden_size")
        if concat and self.embedder_hidden_size != self.block_hidden_size // L:
            raise ValueError(
                f"BlockTransformerConfig.embedder_hidden_size "
                f"({self.embedder_hidden_size}) must equal block_hidden_size / "
                f"block_length ({self.block_hidden_size // L})")

    def _check_positions(self) -> None:
        """Each decoder has the positions the longest request needs: one per
        block in the block decoder, one window in the token decoder."""
        if self.block_max_position_embeddings < self.max_num_blocks:
            raise ValueError(
                f"BlockTransformerConfig.block_max_position_embeddings "
                f"({self.block_max_position_embeddings}) is smaller than the "
                f"{self.max_num_blocks} blocks max_position_embeddings "
                f"({self.max_position_embeddings}) needs")
        if self.token_max_position_embeddings < self.token_cache_length:
            raise ValueError(
                f"BlockTransformerConfig.token_max_position_embeddings "
                f"({self.token_max_position_embeddings}) is smaller than the "
                f"token decoder's window ({self.token_cache_length})")

    def _check_token_ids(self) -> None:
        """pad and bos index the embedding table, so they must be in the vocabulary."""
        for field in ("pad_token_id", "bos_token_id"):
            value = getattr(self, field)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"BlockTransformerConfig.{field} must be a token id in "
                    f"[0, {self.vocab_size}), got {value!r}")
