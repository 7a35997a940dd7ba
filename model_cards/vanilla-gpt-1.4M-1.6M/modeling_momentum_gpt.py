"""MomentumGPT: a GPT-2-style causal LM whose attention adds momentum on the value vectors.

Dai et al. (2023, §5) read attention values as meta-gradients and add momentum to them:

    MoAttn(V, K, q_t) = softmax-attention_t + sum_{i<t} eta^(t-i) v_i

per head, before the output projection. This file is self-contained (it imports only `transformers`, `torch` and
its sibling configuration file) because `save_pretrained` copies it next to the weights for `trust_remote_code`
users who do not have the plugin installed.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, LinearAttentionCacheLayerMixin
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask, find_packed_sequence_indices
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple, is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_momentum_gpt import MomentumGPTConfig

# transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache` (the old name is
# deprecated, removal planned for 5.40); 5.23 knows only the old name. Forwards accept both; our own calls and
# outputs use the name the installed release expects.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _deprecate_old_cache_name(forward: Callable) -> Callable:
    """Warn on `past_key_values=` as transformers' own models do since 5.24 (a `FutureWarning`, none while
    compiling); on 5.23 it is the release's own name and passes silently."""
    if CACHE_NAME == "past_key_values":
        return forward
    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache", raise_if_both_names=True)(forward)


# --------------------------------------------------------------------------------------------------------------
# The momentum scan
# --------------------------------------------------------------------------------------------------------------


def _powers(eta: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """eta[h] ** exponents[...] for non-negative integer exponents, shaped (heads, *exponents.shape)."""
    return torch.pow(eta.reshape(-1, *([1] * exponents.dim())), exponents)


def momentum_scan(
    values: torch.Tensor,
    eta: float | torch.Tensor,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 32,
    sequence_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal, unnormalised exponential moving sum of value vectors.

    For positions t = 0..T-1 of ``values`` (batch, heads, T, head_dim) it returns

        m_t = eta^t * s + sum_{0 <= i < t} eta^(t-i) v_i        (strictly earlier positions only)

    where ``s = initial_state`` (batch, heads, head_dim) is the momentum entering position 0 (from a cache), and the
    state for the position after the last one, ``m_T = eta * (m_{T-1} + v_{T-1})``.

    Cost is O(T * chunk_size * d) for the intra-chunk products plus O(T/chunk * log(T/chunk) * d) for a
    Hillis-Steele scan over chunk summaries: linear in T for a fixed chunk, never a T x T matrix. Every power of eta
    has a non-negative exponent (no division by eta^t), and the sums run in fp32 for half-precision inputs, so the
    scan is stable at T = 8192, eta = 0.99 in fp32 and bf16.

    ``eta`` is a float or a per-head tensor of shape (heads,). ``sequence_ids`` (batch, T), for several documents
    packed into one row, restarts the sum where the id changes: a document's positions only see its own values
    (the first document continues ``initial_state``).
    """
    batch, heads, length, head_dim = values.shape
    compute_dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    v = values.to(compute_dtype)

    if length == 1:
        # One decoding step: m_0 = s and m_1 = eta * (s + v_0); skip the chunk machinery and every helper tensor
        # (this is the hot path of generate(), where per-step overhead matters more than arithmetic).
        state = torch.zeros_like(v[:, :, 0]) if initial_state is None else initial_state.to(compute_dtype)
        step_eta = eta.reshape(1, -1, 1).to(compute_dtype) if isinstance(eta, torch.Tensor) else eta
        final_state = step_eta * (state + v[:, :, 0])
        # A copy: the caller may write the final state into the very buffer `initial_state` lives in.
        return state[:, :, None].to(values.dtype, copy=True), final_state.to(values.dtype)

    eta_t = torch.as_tensor(eta, dtype=compute_dtype, device=values.device).reshape(-1).expand(heads)

    chunk = max(1, min(chunk_size, length))
    n_chunks = math.ceil(length / chunk)
    padded = n_chunks * chunk
    if padded != length:  # trailing zeros cannot influence earlier positions
        v = nn.functional.pad(v, (0, 0, 0, padded - length))
    v = v.view(batch, heads, n_chunks, chunk, head_dim)

    offsets = torch.arange(chunk, device=values.device, dtype=compute_dtype)
    lag = offsets[:, None] - offsets[None, :]  # r - r'
    # intra[h, r, r'] = eta^(r - r') for r' < r (strictly earlier), else 0
    intra = _powers(eta_t, lag.clamp(min=0)) * (lag > 0)
    momentum = torch.einsum("hrs,bhcsd->bhcrd", intra, v)

    if n_chunks > 1:
        # Summary of chunk c as seen from the start of chunk c+1: u_c = sum_r eta^(chunk - r) v_{c, r}.
        summary = torch.einsum("hs,bhcsd->bhcd", _powers(eta_t, chunk - offsets), v)
        # Inclusive scan S_c = sum_{c' <= c} a^(c - c') u_c' with a = eta^chunk (Hillis-Steele, log2(n) steps).
        decay = eta_t**chunk
        shift = 1
        while shift < n_chunks:
            shifted = decay[None, :, None, None] * summary[:, :, :-shift]
            summary = torch.cat([summary[:, :, :shift], summary[:, :, shift:] + shifted], dim=2)
            decay = decay * decay
            shift *= 2
        # The momentum entering chunk c is S_{c-1} (nothing enters chunk 0 from inside the sequence).
        carry = nn.functional.pad(summary[:, :, :-1], (0, 0, 1, 0))
        momentum = momentum + _powers(eta_t, offsets)[None, :, None, :, None] * carry[:, :, :, None, :]

    momentum = momentum.reshape(batch, heads, padded, head_dim)[:, :, :length]
    if initial_state is not None:
        positions = torch.arange(length, device=values.device, dtype=compute_dtype)
        momentum = (
            momentum
            + _powers(eta_t, positions)[None, :, :, None] * initial_state.to(compute_dtype)[:, :, None]
        )
    if sequence_ids is not None:
        momentum = _restart_at_document_starts(momentum, eta_t, sequence_ids)
    final_state = eta_t[None, :, None] * (
        momentum[:, :, -1] + v.view(batch, heads, padded, head_dim)[:, :, length - 1]
    )
    return momentum.to(values.dtype), final_state.to(values.dtype)


def _restart_at_document_starts(
    momentum: torch.Tensor, eta: torch.Tensor, sequence_ids: torch.Tensor
) -> torch.Tensor:
    """Remove, from every position of a packed row, the momentum that entered its document from earlier ones.

    Inside a document that starts at position s the scan's sum is m_t = eta^(t-s) * m_s + (the document's own
    sum), so subtracting eta^(t-s) * m_s leaves the document alone. The first document keeps what it inherited.
    """
    batch, heads, length, head_dim = momentum.shape
    index = torch.arange(length, device=momentum.device)
    starts_here = sequence_ids != torch.cat([sequence_ids[:, :1], sequence_ids[:, :-1]], dim=1)
    document_start = torch.where(starts_here, index, 0).cummax(dim=1).values  # (batch, T)
    entering = momentum.gather(2, document_start[:, None, :, None].expand(batch, heads, length, head_dim))
    lag = (index - document_start).to(momentum.dtype)
    decay = torch.pow(eta[None, :, None], lag[:, None, :]) * (document_start > 0)[:, None, :]
    return momentum - decay[..., None] * entering


def masked_momentum(values: torch.Tensor, eta: float | torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Momentum over the keys an attention mask lets each query see: m_t = sum_{i<t, allowed[t, i]} eta^(t-i) v_i.

    ``values`` (batch, heads, keys, head_dim); ``allowed`` (batch, 1 or heads, queries, keys), True where a query
    may attend to a key. A query's own position t is the last key its row allows (a token always sees itself),
    so this holds for any cache layout (a static buffer, left padding, packed documents). It costs O(queries x
    keys), like the attention it follows; the chunked `momentum_scan` is used wherever the mask is plain causal.
    """
    compute_dtype = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    key_index = torch.arange(values.shape[2], device=values.device)
    own_position = torch.where(allowed, key_index, -1).amax(dim=-1, keepdim=True)
    lag = (own_position - key_index).to(compute_dtype)
    eta_t = torch.as_tensor(eta, dtype=compute_dtype, device=values.device).reshape(1, -1, 1, 1)
    weights = torch.pow(eta_t, lag.clamp(min=0)) * ((lag > 0) & allowed)
    return torch.matmul(weights, values.to(compute_dtype)).to(values.dtype)


def allowed_keys(attention_mask: torch.Tensor) -> torch.Tensor:
    """A 4-D attention mask as booleans (True = may attend), from the boolean or additive (0 / -inf) convention."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


# --------------------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


class MomentumGPTAttention(nn.Module):
    """Multi-head causal self-attention plus momentum on the values (per head, before `o_proj`)."""

    def __init__(self, config: MomentumGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1  # read by the sdpa/flash attention functions
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attn_pdrop
        self.is_causal = True

        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)
        if config.learnable_eta:
            # eta = sigmoid(logit) keeps every head's eta inside (0, 1) whatever the optimiser does.
            self.eta_logit = nn.Parameter(torch.full((self.num_heads,), _logit(config.momentum_eta)))

    @property
    def eta(self) -> float | torch.Tensor:
        """The momentum coefficient: a float, or one value per head when it is learned."""
        if self.config.learnable_eta:
            return torch.sigmoid(self.eta_logit)
        return float(self.config.momentum_eta)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        momentum_mask: torch.Tensor | None = None,
        packed_sequence_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        new_values = value_states

        with_momentum = self.config.uses_momentum
        past_length = cache.get_seq_length(self.layer_idx) if with_momentum and cache is not None else 0
        if isinstance(past_length, torch.Tensor):
            # A static layer reports its live length counter, which `update()` below increments in place: keep
            # the length before this step (a reset cache holds 0 tokens, not the ones this step adds).
            past_length = past_length.clone()
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )

        if with_momentum:
            momentum = self._momentum(
                new_values, value_states, cache, past_length, momentum_mask, packed_sequence_ids
            )
            attn_output = attn_output + momentum.transpose(1, 2)

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights

    def _momentum(
        self,
        new_values: torch.Tensor,
        all_values: torch.Tensor,
        cache: Cache | None,
        past_length: int | torch.Tensor,
        momentum_mask: torch.Tensor | None,
        packed_sequence_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Momentum for the new positions, continuing the state carried in the cache when there is one."""
        eta, chunk = self.eta, self.config.momentum_chunk_size
        query_length = new_values.shape[2]
        layer = cache.layers[self.layer_idx] if cache is not None else None

        if momentum_mask is not None and momentum_mask.dim() == 4:
            # A caller's own 4-D mask: the momentum follows it (padding, packing, any custom pattern) over every
            # cached value. The state carried on is the last query's, as its next token would see it.
            momentum = masked_momentum(all_values, eta, allowed_keys(momentum_mask))
            if isinstance(layer, LinearAttentionCacheLayerMixin):
                step_eta = eta.reshape(1, -1, 1) if isinstance(eta, torch.Tensor) else eta
                self._store_state(cache, step_eta * (momentum[:, :, -1] + new_values[:, :, -1]))
            return momentum

        if layer is not None and not isinstance(layer, LinearAttentionCacheLayerMixin):
            # A cache layer without a state slot (a plain `DynamicCache()`, e.g. one built for rollback with
            # `crop`): rescan all cached values, exact but O(T) per decoding step instead of O(1).
            if getattr(layer, "max_cache_len", None) is not None:
                # Its keys/values are a preallocated buffer: a scan over it would run over unwritten slots.
                raise ValueError(
                    f"Layer {self.layer_idx} of this {type(cache).__name__} holds a preallocated key/value buffer "
                    "but no momentum state. Build the cache from the model's config "
                    "(StaticCache(config=model.config, max_cache_len=...)) so each layer carries its momentum."
                )
            values = all_values
            if momentum_mask is not None:
                values = values * momentum_mask[:, None, -values.shape[2] :, None].to(values.dtype)
            momentum, _ = momentum_scan(values, eta, chunk_size=chunk)
            return momentum[:, :, -query_length:]

        values = new_values
        if momentum_mask is not None:
            # Padding contributes nothing to the moving sum (left-padded rows equal unpadded sequences).
            values = values * momentum_mask[:, None, -query_length:, None].to(values.dtype)
        state = None
        if layer is not None:
            state = cache.get_recurrent_state(self.layer_idx)
            if state is None and not is_torchdynamo_compiling() and past_length > 0:
                raise ValueError(
                    f"Layer {self.layer_idx} of the cache holds {int(past_length)} tokens but no momentum state, so "
                    "the momentum would silently restart from zero. Pass the cache the model returned (or one built "
                    "with DynamicCache(config=model.config)) through every step, or start from an empty cache."
                )
        momentum, final_state = momentum_scan(
            values, eta, initial_state=state, chunk_size=chunk, sequence_ids=packed_sequence_ids
        )
        if layer is not None:
            self._store_state(cache, final_state)
        return momentum

    def _store_state(self, cache: Cache, state: torch.Tensor) -> None:
        # `update_recurrent_state` copies into a buffer allocated once, so the state keeps a fixed address
        # (static caches, CUDA graphs). `get_recurrent_state` reports a state only once `has_previous_state` is set,
        # which the Cache API does in `update_conv_state`; momentum has no convolution state, so set it here.
        cache.update_recurrent_state(state, self.layer_idx)
        layer = cache.layers[self.layer_idx]
        layer.has_previous_state[0] = True
        # `crop` cannot roll the momentum back (the state holds only its last value), so the layer must not claim
        # it can, whatever the release's default: 5.24 derives it from the state (a read-only property), 5.25 made
        # it a class attribute `True`. Generate then refuses assisted and prompt-lookup decoding clearly.
        if not isinstance(getattr(type(layer), "is_croppable", None), property):
            layer.is_croppable = False


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The cache, under either of its names (`cache` since transformers 5.24, `past_key_values` before)."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache once: `cache` or `past_key_values` (its pre-5.24 name), not both.")
    return cache if cache is not None else past_key_values


def _is_exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7
    return bool(is_exporting and is_exporting())


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class MomentumGPTMLP(nn.Module):
    def __init__(self, config: MomentumGPTConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class MomentumGPTBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm decoder block: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2 / fairseq GPT layout)."""

    def __init__(self, config: MomentumGPTConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = MomentumGPTAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = MomentumGPTMLP(config)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        momentum_mask: torch.Tensor | None = None,
        packed_sequence_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.attn(
            self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            cache=cache,
            momentum_mask=momentum_mask,
            packed_sequence_ids=packed_sequence_ids,
            **kwargs,
        )
        hidden_states = hidden_states + self.dropout(attn_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.dropout(mlp_output)


class MomentumGPTPreTrainedModel(PreTrainedModel):
    config: MomentumGPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MomentumGPTBlock"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {"hidden_states": MomentumGPTBlock, "attentions": MomentumGPTAttention}

    @property
    def _is_stateful(self) -> bool:
        # With momentum, each cache layer carries a recurrent state that `crop` cannot roll back, so generate()
        # refuses assisted / prompt-lookup decoding clearly instead of desynchronising. Without it (eta = 0, not
        # learned) the cache holds only keys and values, and every decoding mode works.
        return self.config.uses_momentum

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MomentumGPTAttention | MomentumGPTMLP):
            # GPT-2's scheme: scale the residual-branch output projections by 1/sqrt(2 * n_layer).
            out_proj = module.o_proj if isinstance(module, MomentumGPTAttention) else module.down_proj
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(out_proj.weight, mean=0.0, std=std)
        if isinstance(module, MomentumGPTAttention) and self.config.learnable_eta:
            init.constant_(module.eta_logit, _logit(self.config.momentum_eta))


class MomentumGPTModel(MomentumGPTPreTrainedModel):
    def __init__(self, config: MomentumGPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.layers = nn.ModuleList(
            [MomentumGPTBlock(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @_deprecate_old_cache_name
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        given_cache, given_position_ids = _one_cache(cache, past_key_values), position_ids
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if given_cache is not None and self.config.uses_momentum and _is_exporting():
            # An exported program carries the key/value buffers its wrapper registers (ExecuTorch's
            # `TorchExportableModuleForDecoderOnlyLM` registers keys, values and lengths), never the momentum state,
            # so from the second token on it would silently drop the momentum. Refuse instead.
            raise ValueError(
                "MomentumGPT with momentum (momentum_eta > 0 or learnable_eta) cannot be exported with a cache: the "
                "exported program would not carry the momentum state between calls and would give wrong logits "
                "after the first token. Export the cache-free forward (use_cache=False, the whole sequence each "
                "call) or an eta = 0 model."
            )
        cache = given_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        query_length = inputs_embeds.shape[1]
        # (continuous batching passes its own paged cache, which is no `Cache`, along with the position_ids)
        past_seen_tokens = cache.get_seq_length() if isinstance(cache, Cache) else 0
        padding_mask = (
            attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
        )
        if position_ids is None:
            if padding_mask is not None:
                # Left padding: count positions from each row's first real token, as generate() does.
                position_ids = (padding_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -query_length:]
            else:
                position_ids = torch.arange(query_length, device=inputs_embeds.device) + past_seen_tokens
                position_ids = position_ids.unsqueeze(0)
        self._check_length(cache, past_seen_tokens, query_length)
        hidden_states = self.dropout(inputs_embeds + self.embed_positions(position_ids))

        packed_sequence_ids = None
        if isinstance(attention_mask, dict):
            # generate() prepares one mask per layer type for a static cache (`create_masks_for_generate`): the
            # 4-D causal mask of the softmax attention, and, for the momentum, the padding of the new tokens
            # (`create_recurrent_attention_mask`), without which left-padded rows would sum their padding.
            causal_mask = attention_mask["full_attention"]
            momentum_mask = attention_mask.get("linear_attention")
        else:
            # Masks are sized against the caller's cache: one created above is still empty, sized like no cache,
            # so packed rows (position_ids that restart, no mask) get block-diagonal attention as without one.
            causal_mask = create_causal_mask(
                config=self.config,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=given_position_ids,
                **{CACHE_NAME: given_cache},
            )
            momentum_mask = attention_mask
            if attention_mask is None and given_cache is None and given_position_ids is not None:
                # ... and the momentum restarts at each packed document, like the attention.
                packed_sequence_ids = find_packed_sequence_indices(
                    given_position_ids.expand(inputs_embeds.shape[0], -1)
                )

        for block in self.layers[: self.config.num_hidden_layers]:
            hidden_states = block(
                hidden_states,
                attention_mask=causal_mask,
                cache=cache,
                momentum_mask=momentum_mask,
                packed_sequence_ids=packed_sequence_ids,
                position_ids=position_ids,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, **{CACHE_NAME: cache})

    def _check_length(self, cache: Cache | None, past_seen_tokens: int, query_length: int) -> None:
        """A clear error instead of an index error deep in the position table (never a host sync)."""
        if is_torchdynamo_compiling():
            return
        table = self.config.max_position_embeddings
        buffer = (
            getattr(cache.layers[0], "max_cache_len", None)
            if isinstance(cache, Cache) and cache.layers
            else None
        )
        if isinstance(buffer, int) and buffer > table:
            raise ValueError(
                f"This static cache holds {buffer} positions, more than the learned position table "
                f"(max_position_embeddings={table}). Build it with max_cache_len <= {table} "
                "(generate: max_length or max_new_tokens that fit)."
            )
        if isinstance(past_seen_tokens, int) and past_seen_tokens + query_length > table:
            raise ValueError(
                f"Sequence of {past_seen_tokens + query_length} positions is longer than the learned position table "
                f"(max_position_embeddings={table}). Truncate the input "
                "(e.g. tokenizer(..., truncation=True, max_length=...)) or generate fewer new tokens."
            )


class MomentumGPTForCausalLM(MomentumGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: MomentumGPTConfig):
        super().__init__(config)
        self.model = MomentumGPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @_deprecate_old_cache_name
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict[str, torch.Tensor] | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def init_continuous_batching(self, *args, **kwargs):
        if self.config.uses_momentum:
            raise ValueError(
                "Continuous batching (generate_batch) keeps keys and values in a paged cache with no per-sequence "
                "momentum state, so it cannot run MomentumGPT with momentum (momentum_eta > 0 or learnable_eta). "
                "Use model.generate() on a padded batch instead; an eta = 0 model supports continuous batching."
            )
        return super().init_continuous_batching(*args, **kwargs)


class MomentumGPTForSequenceClassification(GenericForSequenceClassification, MomentumGPTPreTrainedModel):
    def __init__(self, config: MomentumGPTConfig):
        # Not `GenericForSequenceClassification.__init__`: it builds the body with `AutoModel.from_config`, which,
        # for a checkpoint loaded through remote code, asks to trust the same code a second time.
        MomentumGPTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.model = MomentumGPTModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()


__all__ = [
    "MomentumGPTForCausalLM",
    "MomentumGPTForSequenceClassification",
    "MomentumGPTModel",
    "MomentumGPTPreTrainedModel",
    "masked_momentum",
    "momentum_scan",
]
