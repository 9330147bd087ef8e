"""Tiny random-initialised configs of the real transformers hybrid architectures (tests, benchmarks).

`tiny_model(family)` builds an fp32 model on CPU with a fixed seed; sizes are small enough for a
full test suite on two cores, but every layer kind of the architecture is present.
"""

from __future__ import annotations

import torch

from hypic_rag.errors import RequestError

VOCAB = 128


def qwen3_5_style_config(vocab: int, hidden: int, layers: int | tuple[str, ...], *, heads: int = 4,
                         linear_key_heads: int = 2, linear_value_heads: int = 4, intermediate: int | None = None,
                         max_positions: int = 4096, bos: int = 0, eos: int = 1, pad: int = 2,
                         tie_word_embeddings: bool | None = None):
    """A Qwen3.5 text config: 3 Gated DeltaNet layers to 1 full-attention layer (or the given layer
    types), 2 KV heads, every head dimension hidden // heads, short conv of 4. The one builder of
    the tiny test models, the TTFT bench's models and the shipped model's architecture."""
    from transformers import Qwen3_5TextConfig

    if isinstance(layers, int):
        layers = tuple("full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers))
    head_dim = hidden // heads
    extra = {} if tie_word_embeddings is None else {"tie_word_embeddings": tie_word_embeddings}
    return Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=len(layers), num_attention_heads=heads, num_key_value_heads=2, head_dim=head_dim,
        linear_num_key_heads=linear_key_heads, linear_num_value_heads=linear_value_heads,
        linear_key_head_dim=head_dim, linear_value_head_dim=head_dim, linear_conv_kernel_dim=4,
        layer_types=list(layers), max_position_embeddings=max_positions, eos_token_id=eos, bos_token_id=bos,
        pad_token_id=pad, **extra,
    )


def bamba_style_config(vocab: int, hidden: int, layers: int, *, max_positions: int = 32768):
    """A Bamba config at bench sizes: Mamba2 layers with one full-attention layer in four (as the
    Qwen3.5-style one), Mamba2 heads of 64, state 64, one group, 8 attention heads over 2 KV heads."""
    from transformers import BambaConfig

    return BambaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, mamba_n_heads=2 * hidden // 64, mamba_d_head=64,
        mamba_d_state=64, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=256,
        attn_layer_indices=[i for i in range(layers) if (i + 1) % 4 == 0],
        max_position_embeddings=max_positions, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _qwen3_5(layers: tuple[str, ...]):
    return qwen3_5_style_config(VOCAB, 64, layers, intermediate=128)


def _qwen3_next(layers: tuple[str, ...]):
    from transformers import Qwen3NextConfig

    return Qwen3NextConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layers),
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
        layer_types=list(layers), num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, decoder_sparse_step=1, max_position_embeddings=4096,
        eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _falcon_h1(num_layers: int, mup: bool = False):
    """mup: every muP multiplier away from 1 and the gated RMSNorm on, with two groups (the shipped
    Falcon-H1 checkpoints set them; the plain tiny config leaves them at 1, norm off)."""
    from transformers import FalconH1Config

    extra = dict(embedding_multiplier=1.7, lm_head_multiplier=0.6, key_multiplier=0.8, attention_in_multiplier=1.3,
                 attention_out_multiplier=0.7, ssm_in_multiplier=1.2, ssm_out_multiplier=0.9,
                 ssm_multipliers=[1.1, 0.9, 1.2, 0.8, 1.05], mlp_multipliers=[1.2, 0.8], mamba_rms_norm=True,
                 mamba_n_groups=2) if mup else {}
    return FalconH1Config(**{
        **dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
               num_attention_heads=4, num_key_value_heads=2, head_dim=16, mamba_d_ssm=64, mamba_n_heads=4,
               mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=16,
               max_position_embeddings=4096, eos_token_id=1, bos_token_id=0, pad_token_id=2), **extra})


def _bamba(num_layers: int, attn_layers: tuple[int, ...]):
    from transformers import BambaConfig

    return BambaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
        mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=16, attn_layer_indices=list(attn_layers),
        max_position_embeddings=4096, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _granite(experts: int, rope: bool):
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["linear_attention", "full_attention", "linear_attention"],
        mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16, mamba_n_groups=2, mamba_d_conv=4, mamba_chunk_size=16,
        num_local_experts=experts, num_experts_per_tok=2, shared_intermediate_size=96,
        position_embedding_type="rope" if rope else None, embedding_multiplier=1.5, residual_multiplier=0.5,
        attention_multiplier=0.2, logits_scaling=2.0, max_position_embeddings=4096, eos_token_id=1,
        bos_token_id=0, pad_token_id=2,
    )


def _kimi_linear():
    from transformers import KimiLinearConfig

    return KimiLinearConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16,
        v_head_dim=16, q_lora_rank=None,
        linear_attn_config={"full_attn_layers": [2], "kda_layers": [1, 3], "num_heads": 4, "head_dim": 16,
                            "short_conv_kernel_size": 4},
        max_position_embeddings=4096, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _lfm2():
    from transformers import Lfm2Config

    return Lfm2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, conv_L_cache=3, layer_types=["conv", "full_attention", "conv"],
        max_position_embeddings=4096, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _olmo_hybrid():
    from transformers import OlmoHybridConfig

    return OlmoHybridConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["linear_attention", "linear_attention", "full_attention",
                                            "linear_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, max_position_embeddings=4096, eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _bailing_hybrid():
    from transformers import BailingHybridConfig

    return BailingHybridConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=16, v_head_dim=16, n_group=2, topk_group=1, num_local_experts=4, num_experts_per_tok=2,
        layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        mlp_layer_types=["dense", "sparse", "dense", "sparse"], rope_theta=10000.0, max_position_embeddings=4096,
        eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def _nemotron_h():
    from transformers import NemotronHConfig

    return NemotronHConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
        layers_block_type=["mamba", "mlp", "attention", "mlp", "mamba", "moe"], num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, ssm_state_size=16, mamba_num_heads=4, mamba_head_dim=32, n_groups=2,
        conv_kernel=4, chunk_size=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        moe_shared_expert_intermediate_size=32, max_position_embeddings=4096, eos_token_id=1, bos_token_id=0,
        pad_token_id=2,
    )


def _zamba2():
    from transformers import Zamba2Config

    return Zamba2Config(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, n_mamba_heads=4, chunk_size=16,
        num_attention_heads=4, num_key_value_heads=4, num_mem_blocks=1, use_shared_attention_adapter=True,
        adapter_rank=8, use_mem_rope=True, tie_word_embeddings=False, max_position_embeddings=4096, eos_token_id=1, bos_token_id=0,
        pad_token_id=2,
    )


def _minimax():
    from transformers import MiniMaxConfig

    return MiniMaxConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, layer_types=["linear_attention", "linear_attention", "full_attention",
                                                        "linear_attention"],
        num_local_experts=4, num_experts_per_tok=2, block_size=16, max_position_embeddings=4096,
        eos_token_id=1, bos_token_id=0, pad_token_id=2,
    )


def tiny_config(family: str):
    """Configs by name: qwen3_5, qwen3_next, olmo_hybrid, falcon_h1 (and falcon_h1_mup), bamba, granitemoehybrid (with
    experts and RoPE), granitemoehybrid_dense (NoPE), nemotron_h (NoPE, MLP and MoE blocks), zamba2
    (shared attention with adapters, RoPE), kimi_linear, bailing_hybrid (KDA + MLA, MoE), minimax
    (lightning, layer 0 linear), lfm2 (hybrids), and qwen3_5_linear_only / bamba_linear_only (one
    linear layer, no attention)."""
    gdn3to1 = ("linear_attention", "linear_attention", "linear_attention", "full_attention")
    builders = {
        "qwen3_5": lambda: _qwen3_5(gdn3to1),
        "qwen3_5_linear_only": lambda: _qwen3_5(("linear_attention",)),
        "qwen3_next": lambda: _qwen3_next(gdn3to1),
        "falcon_h1": lambda: _falcon_h1(2),
        "falcon_h1_mup": lambda: _falcon_h1(2, mup=True),  # every muP multiplier set, gated norm on
        "bamba": lambda: _bamba(3, (1,)),
        "bamba_linear_only": lambda: _bamba(1, ()),
        "granitemoehybrid": lambda: _granite(4, rope=True),  # experts + shared MLP, RoPE, every multiplier set
        "granitemoehybrid_dense": lambda: _granite(0, rope=False),  # shared MLP only, NoPE (as Granite-4.0-H ships)
        "kimi_linear": _kimi_linear,
        "lfm2": _lfm2,
        "olmo_hybrid": _olmo_hybrid,
        "bailing_hybrid": _bailing_hybrid,
        "nemotron_h": _nemotron_h,
        "zamba2": _zamba2,
        "minimax": _minimax,
    }
    if family not in builders:
        raise RequestError(f"unknown tiny family {family!r}; choose one of {sorted(builders)}")
    return builders[family]()


@torch.no_grad()
def give_long_memory(model: torch.nn.Module, seed: int = 0) -> None:
    """Set every linear mixer's decay to a slow rate (per-token decay ~exp(-0.003..-0.03)).

    Random initialisation draws decays so fast that a state forgets its context within a few tokens,
    which would make any caching scheme look exact. Trained models keep long memories; so do these.
    """
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        a_log, dt_bias = getattr(module, "A_log", None), getattr(module, "dt_bias", None)
        if getattr(module, "safe_gate", False):  # Ring-linear's bounded gate: lower_bound * sigmoid(rate * x)
            a_log.zero_()  # rate 1
            dt_bias.copy_(torch.empty(dt_bias.shape).uniform_(-6.0, -4.0, generator=g).to(dt_bias.dtype))
        elif isinstance(a_log, torch.nn.Parameter) and isinstance(dt_bias, torch.nn.Parameter):
            rates = torch.empty(a_log.shape).uniform_(0.02, 0.2, generator=g)
            a_log.copy_(rates.log().to(a_log.dtype))
            dt_bias.fill_(-2.0)  # softplus(-2) = 0.127


def tiny_model(
    family: str, seed: int = 0, dtype: torch.dtype = torch.float32, long_memory: bool = True
) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family), dtype=dtype, attn_implementation="sdpa")
    if long_memory:
        give_long_memory(model, seed)
    return model.eval()
