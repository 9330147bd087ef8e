"""Lightning attention (MiniMax-Text-01, model type minimax): S_t = lambda_h S_{t-1} + k_t^T v_t and
o_t = q_t S_t, with a fixed decay lambda_h = exp(-slope_h) per head and no conv. Over L tokens the
operator is lambda_h^L, a scalar per head (as Mamba2's, and composed the same way); E is the
zero-start state over the range.

transformers writes this recurrence inline in MiniMaxLightningAttention.forward, so there is no
module function for capture or the seam pass to read and split. `route_lightning_layers` gives each
lightning layer of a model a forward that computes the same thing through this module's
`lightning_attention` (the block form transformers uses for a first forward, here from any start
state), which both swap like a modeling module's function. `lightning_recurrent` is the plain
per-token form (transformers' own path from a state), the reference. Inputs are [B, T, H, D].

MiniMax's model refuses any cache but its MiniMaxCache, which keeps linear states in a side list;
`lightning_cache` is a MiniMaxCache laid out as DynamicCache(config) (a LinearAttentionLayer per
lightning layer), so cache_ops reads and writes it as every other family's.
"""

from __future__ import annotations

import functools
import types

import torch
import torch.nn.functional as F

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm, product_of_transitions
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.capture import RecurrenceCall
from hypic_rag.ops.transition import InteriorTransition

LIGHTNING_CLASS = "MiniMaxLightningAttention"


def _start(initial_state, d_k: int, v: torch.Tensor) -> torch.Tensor:
    """The state a call starts from, [B, H, D_k, D_v] in the values' dtype (zeros without one)."""
    if initial_state is None:
        return torch.zeros(v.shape[0], v.shape[1], d_k, v.shape[-1], dtype=v.dtype, device=v.device)
    return initial_state.to(v.dtype)


def lightning_attention(query, key, value, slope, initial_state=None, output_final_state=False, block_size=256):
    """Outputs [B, T, H, D_v] and the final state [B, H, D_k, D_v] (None unless asked), block by block:
    within a block (QK^T * decay) V, across blocks (Q * decay) S. slope: [H, 1, 1]."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # [B, H, T, D]
    _, heads, steps, d_k = q.shape
    s = slope.to(torch.float32).reshape(heads, 1, 1)
    state = _start(initial_state, d_k, v)
    outs = []
    for start in range(0, steps, block_size):
        c = min(block_size, steps - start)
        idx = torch.arange(1, c + 1, device=v.device, dtype=torch.float32)
        q_decay = torch.exp(-s * idx[:, None]).to(v.dtype)
        k_decay = torch.exp(-s * (c - idx)[:, None]).to(v.dtype)
        gap = idx[:, None] - idx[None, :]
        diagonal = torch.exp(torch.where(gap >= 0, -s * gap, float("-inf"))).to(v.dtype)
        qb, kb, vb = q[:, :, start:start + c], k[:, :, start:start + c], v[:, :, start:start + c]
        intra = torch.matmul(torch.matmul(qb, kb.transpose(-1, -2)) * diagonal, vb)
        inter = torch.matmul(qb * q_decay, state)
        outs.append(inter + intra)
        state = state * torch.exp(-s * c).to(v.dtype) + torch.matmul((kb * k_decay).transpose(-1, -2), vb)
    out = torch.cat(outs, dim=2).transpose(1, 2) if outs else value.new_zeros(value.shape)
    return out, (state if output_final_state else None)


def lightning_recurrent(query, key, value, slope, initial_state=None, output_final_state=False, block_size=None):
    """The plain per-token recurrence (transformers' path once a state exists); block_size unused."""
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    _, heads, steps, d_k = q.shape
    ratio = torch.exp(-slope.to(torch.float32).reshape(heads, 1, 1)).to(v.dtype)
    state = _start(initial_state, d_k, v)
    outs = []
    for t in range(steps):
        state = ratio * state + torch.matmul(k[:, :, t:t + 1].transpose(-1, -2), v[:, :, t:t + 1])
        outs.append(torch.matmul(q[:, :, t:t + 1], state))
    return torch.cat(outs, dim=2).transpose(1, 2), (state if output_final_state else None)


def lightning_forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None,
                      **kwargs):
    """MiniMaxLightningAttention.forward with its recurrence through `lightning_attention` (looked up in
    this module at call time, so a swap of it is seen)."""
    batch, steps, _ = hidden_states.shape
    qkv = self.act_fn(self.qkv_proj(hidden_states))
    if attention_mask is not None and attention_mask.dim() == 2:  # padding, as transformers applies it
        qkv = (qkv * attention_mask[:, :, None]).to(qkv.dtype)
    qkv = qkv.reshape(batch, steps, self.num_attention_heads, 3 * self.head_dim)
    query, key, value = torch.split(qkv, self.head_dim, dim=3)
    state = past_key_values.get_linear_cache(self.layer_idx) if past_key_values is not None else None
    if not isinstance(state, torch.Tensor):  # MiniMaxCache marks an empty slot with []
        state = None
    out, final = lightning_attention(query, key, value, self.slope_rate, initial_state=state,
                                     output_final_state=True, block_size=self.block_size)
    out = self.norm(out.reshape(batch, steps, self.num_attention_heads * self.head_dim))
    out = self.out_proj(F.sigmoid(self.output_gate(hidden_states)) * out)
    if past_key_values is not None:
        past_key_values.set_linear_cache(self.layer_idx, final)
    return out, final


def route_lightning_layers(model: torch.nn.Module) -> None:
    """Give every lightning layer of `model` the routed forward (idempotent; other models untouched)."""
    for module in model.modules():
        if type(module).__name__ == LIGHTNING_CLASS and not getattr(module, "_hypic_routed", False):
            module.forward = types.MethodType(lightning_forward, module)
            module._hypic_routed = True


@functools.cache
def _cache_class():
    from transformers import DynamicCache
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    class LightningCache(MiniMaxCache):
        """MiniMaxCache (the only cache MiniMax's model takes) with DynamicCache(config)'s layers: each
        lightning layer's state lives in its LinearAttentionLayer."""

        def __init__(self, config) -> None:
            DynamicCache.__init__(self, config=config)
            self.linear_cache = []

        def get_linear_cache(self, layer_idx: int):
            layer = self.layers[layer_idx]
            return layer.recurrent_states[0] if layer.is_recurrent_states_initialized[0] else None

        def set_linear_cache(self, layer_idx: int, linear_cache) -> None:
            self.layers[layer_idx].update_recurrent_state(linear_cache, state_idx=0)

        def __len__(self) -> int:
            return len(self.layers)

        batch_repeat_interleave = DynamicCache.batch_repeat_interleave
        batch_select_indices = DynamicCache.batch_select_indices

    return LightningCache


def lightning_cache(config):
    """An empty cache for a MiniMax model with `config`."""
    return _cache_class()(config)


def lightning_interior(call: RecurrenceCall, start: int) -> InteriorTransition:
    """E from a zero-start call over [start, T); M = exp(-slope * (T - start)), [B, H]."""
    args = call.arguments
    q, k, v = (args[name][:, start:] for name in ("query", "key", "value"))
    _, final = call.fn(q, k, v, args["slope"], initial_state=None, output_final_state=True,
                       block_size=args.get("block_size", 256))
    slope = args["slope"].float().reshape(1, -1)
    operator = torch.exp(-slope * v.shape[1]).expand(v.shape[0], -1)
    return InteriorTransition(state=final.float().contiguous(), operator=operator.contiguous())


def lightning_operator_ref(call: RecurrenceCall, start: int, recurrent_fn) -> torch.Tensor:
    """M from the plain recurrence: each token's transition read off `recurrent_fn` run on that token
    with zero value input and an identity start, multiplied in order; the product is lambda^L I, whose
    diagonal mean is returned per head, [B, H] (tests check it is a multiple of I)."""
    return lightning_transition_product(call, start, recurrent_fn).diagonal(dim1=-2, dim2=-1).mean(-1)


def lightning_transition_product(call: RecurrenceCall, start: int, recurrent_fn) -> torch.Tensor:
    """The ordered product of per-token transitions over [start, T), [B, H, D_k, D_k] fp32."""
    args = call.arguments
    q, k = args["query"][:, start:], args["key"][:, start:]
    batch, steps, heads, d_k = k.shape
    zeros = k.new_zeros(batch, 1, heads, d_k).float()

    def transition(t: int, eye: torch.Tensor) -> torch.Tensor:
        return recurrent_fn(q[:, t:t + 1].float(), k[:, t:t + 1].float(), zeros, args["slope"], initial_state=eye,
                            output_final_state=True)[1]

    return product_of_transitions(batch, heads, d_k, steps, k.device, transition)


LIGHTNING = MixerAdapter(
    family=MixerFamily.LIGHTNING,
    chunk_fn="lightning_attention",
    recurrent_fn="lightning_recurrent",
    recurrence=RecurrenceForm(("query", "key", "value"), "initial_state", "output_final_state"),
    interior=lightning_interior,
    operator_ref=lightning_operator_ref,
    conv_fn=None,
    functions_module=__name__,
)
