"""Lower bounds on a request's time on a GPU: bytes over bandwidth plus FLOPs over peak.

The two ceilings are measured on the machine (a bf16 matrix product and a device-to-device copy),
not taken from a datasheet. The counts are per request and approximate the dominant terms:
  - every forward reads all weights once: hypic's one seam pass (every seam and the question) is one
    forward; with --no batched seams it is one forward per segment, plus the question's;
  - dense FLOPs 2 * params * tokens, attention 4 * tokens * context * heads * head_dim per layer,
    the chunked linear recurrences ~8 * tokens * heads * d_k * d_v per layer;
  - hypic reads each cached entry once and writes its K/V into the request cache.
"""

from __future__ import annotations

import torch

from lean_bench_model import cuda_timed  # (bench/, beside this script)


def measure_peaks(device: str = "cuda") -> dict:
    """Measured bf16 matmul FLOP/s and copy bandwidth (bytes read + written per second)."""
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(2**28, device=device)  # 1 GiB fp32
    dst = torch.empty_like(src)

    flops = 2 * n**3 / cuda_timed(lambda: a @ b, 10, warmup=3)
    bandwidth = 2 * src.numel() * 4 / cuda_timed(lambda: dst.copy_(src), 10, warmup=3)
    del a, b, src, dst
    torch.cuda.empty_cache()
    return {"bf16_flops_per_s": flops, "copy_bytes_per_s": bandwidth}


def _shape(config) -> dict:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = list(getattr(text, "layer_types", None) or [])
    n_attn = sum(t in ("full_attention", "attention") for t in types)
    heads, head_dim = text.num_attention_heads, getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    h_v = getattr(text, "linear_num_value_heads", 0)
    return {"layers": text.num_hidden_layers, "attn_layers": n_attn, "attn_width": heads * head_dim,
            "lin_layers": len(types) - n_attn, "lin_state": h_v * getattr(text, "linear_key_head_dim", 0)
            * getattr(text, "linear_value_head_dim", 0)}


def request_floors(model, segments: int, segment_tokens: int, question_tokens: int, seam: int,
                   entry_bytes: int | None, peaks: dict, forwards: int = 1) -> dict:
    """Seconds: the floor of a full prefill and of a hypic request at 100% hits (bytes/BW + FLOPs/peak)."""
    shape = _shape(model.config)
    embed = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - embed
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) - embed * model.dtype.itemsize
    total = segments * segment_tokens + question_tokens
    kv_bytes_per_token = 2 * shape["attn_layers"] * model.config.num_key_value_heads * model.config.head_dim \
        * model.dtype.itemsize

    def flops(tokens: int, context_mean: float) -> float:
        attn = 4 * tokens * context_mean * shape["attn_width"] * shape["attn_layers"]
        lin = 8 * tokens * shape["lin_state"] * shape["lin_layers"]
        return 2 * dense * tokens + attn + lin

    full_flops = flops(total, total / 2)
    full_bytes = weight_bytes + total * kv_bytes_per_token
    seam_tokens = seam * segments  # every segment's seam, the first one's after the shared prefix
    hypic_flops = flops(seam_tokens, total / 2) + flops(question_tokens, total)
    hypic_bytes = forwards * weight_bytes + segments * (entry_bytes or 0) + total * kv_bytes_per_token
    f, bw = peaks["bf16_flops_per_s"], peaks["copy_bytes_per_s"]
    return {"full_floor_s": full_bytes / bw + full_flops / f, "hypic_floor_s": hypic_bytes / bw + hypic_flops / f,
            "full_flops": full_flops, "full_bytes": full_bytes, "hypic_flops": hypic_flops, "hypic_bytes": hypic_bytes,
            "hypic_forwards": forwards}


def decode_floor(model, context_tokens: int, peaks: dict) -> float:
    """Seconds: the floor of one decode step after `context_tokens` (every weight and the K/V read
    once, 2 * params FLOPs)."""
    shape = _shape(model.config)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = 2 * shape["attn_layers"] * model.config.num_key_value_heads * model.config.head_dim \
        * model.dtype.itemsize * context_tokens
    dense = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return (weight_bytes + kv_bytes) / peaks["copy_bytes_per_s"] + 2 * dense / peaks["bf16_flops_per_s"]
