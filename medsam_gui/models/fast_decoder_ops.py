"""The arithmetic of :class:`~medsam_gui.models.fast_decoder.FastDecoder`: segment-anything's
mask decoder re-derived for box prompts (see :func:`decode_boxes`), with the per-thread buffers
it writes into (:class:`Workspace`). No Qt, no work at import time.
"""

from __future__ import annotations


UPSCALE_CHUNK = 1024  # image tokens per upscaling step (intermediates stay in the CPU caches)


class Workspace:
    """Reused CPU buffers for the large per-box intermediates (one per decoding thread).

    With the app's memory tuning (medsam_gui.runtime.tune_memory: tensors >= 2 MiB on
    transparent huge pages) every fresh 4 MiB tensor costs ~1-7 ms of page faults on the 2-core
    CPU, more than the product that fills it; writing into kept buffers (``out=``) avoids that.
    ``get(name, shape, like)`` returns the buffer ``name`` (re)allocated to ``shape`` with the
    dtype/device of ``like``. Buffers never leave the decoder (results are fresh tensors)."""

    def __init__(self) -> None:
        self.bufs: dict = {}

    def get(self, name: str, shape, like):
        import torch

        shape = torch.Size(shape)
        t = self.bufs.get(name)
        if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
            t = torch.empty(shape, dtype=like.dtype, device=like.device)
            self.bufs[name] = t
        return t


def split_heads(x, nh: int):
    """(B, T, C) -> (B, nh, T, C // nh) (a view)."""
    b, t, c = x.shape
    return x.view(b, t, nh, c // nh).transpose(1, 2)


def merge_heads(x):
    """(B, nh, T, c) -> (B, T, nh * c)."""
    b, nh, t, c = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * c)


def tokens_to_image(att, q, img_pe, img):
    """segment-anything ``Attention(q, k=img_pe, v=img)`` for few query tokens without
    projecting the image tokens: q (B, T, C); img_pe, img (B or 1, N, C) -> (B, T, C).
    Scores ``x . (W_k^T q) + b_k . q``; values ``W_v (sum_n a_n x_n) + b_v``."""
    import math

    import torch
    import torch.nn.functional as F

    nh = att.num_heads
    qh = split_heads(F.linear(q, att.q_proj.weight, att.q_proj.bias), nh)
    b, _, t, c = qh.shape
    qh = qh * (1.0 / math.sqrt(c))  # a power of two for SAM (c = 16): exact
    img_pe, img = img_pe.expand(b, -1, -1), img.expand(b, -1, -1)  # (1, N, C): shared by the boxes
    dt = img.dtype  # the image-side products run in the image tokens' dtype
    g = torch.matmul(qh, att.k_proj.weight.view(nh, c, -1)).reshape(b, nh * t, -1).to(dt)  # (B, nh*T, C)
    bias = torch.matmul(qh, att.k_proj.bias.view(nh, c, 1)).reshape(b, 1, nh * t).to(dt)
    if nh * t > 16:  # many score rows: the tall (N, nh*T) product is faster on the CPU
        s = torch.baddbmm(bias, img_pe, g.transpose(1, 2)).transpose(1, 2).contiguous()
    else:  # a few rows (the final attention of mask token 0): the wide one
        s = torch.baddbmm(bias.transpose(1, 2), g, img_pe.transpose(1, 2))
    a = torch.softmax(s, dim=-1)  # (B, nh*T, N)
    ax = torch.matmul(a, img).to(q.dtype)  # (B, nh*T, C)
    wv = att.v_proj.weight.view(nh, c, -1)  # (nh, c, C)
    o = torch.matmul(ax.view(b, nh, t, -1), wv.transpose(1, 2)) + att.v_proj.bias.view(nh, 1, c)
    return F.linear(merge_heads(o), att.out_proj.weight, att.out_proj.bias)


def image_to_tokens_add(att, residual, scores_from, tok_pe, tok, *, projected: bool, inplace: bool, out=None):
    """``residual + Attention(q=image, k=tok_pe, v=tok)`` (segment-anything's image->token
    attention) for N image tokens attending to few tokens. Returns (out (B, N, C), a (B, N,
    nh*T), m (B, nh*T, C)) with ``out = residual + a @ m``.

    ``projected``: ``scores_from`` is the cached ``q_proj(image + pe)`` as (1, nh, c, N);
    else it is the (B or 1, N, C) image + pe tokens and the query projection is folded into the keys
    (``x . (W_q^T k) + b_q . k``). Softmax runs over the tokens with the N axis last; the value
    and output projections and the output bias are folded into one (N, nh*T) @ (nh*T, C)
    product added to ``residual`` (in place when ``inplace``, else into ``out`` when given)."""
    import math

    import torch
    import torch.nn.functional as F

    nh = att.num_heads
    kh = split_heads(F.linear(tok_pe, att.k_proj.weight, att.k_proj.bias), nh)  # (B, nh, T, c)
    vh = split_heads(F.linear(tok, att.v_proj.weight, att.v_proj.bias), nh)
    b, _, t, c = kh.shape
    kh = kh * (1.0 / math.sqrt(c))
    dt = residual.dtype  # the image-side products run in the image tokens' dtype
    if projected:
        s = torch.matmul(kh.to(dt), scores_from)  # (B, nh, T, N)
    else:
        g = torch.matmul(kh, att.q_proj.weight.view(nh, c, -1)).reshape(b, nh * t, -1).to(dt)  # (B, nh*T, C)
        bias = torch.matmul(kh, att.q_proj.bias.view(nh, c, 1)).reshape(b, 1, nh * t).to(dt)
        s = torch.baddbmm(bias, scores_from.expand(b, -1, -1), g.transpose(1, 2)).transpose(1, 2).contiguous()
    n = s.shape[-1]
    a = torch.softmax(s.view(b, nh, t, n), dim=2).view(b, nh * t, n)
    wo = att.out_proj.weight.view(-1, nh, c).permute(1, 2, 0)  # (nh, c, C)
    # each image token's nh*T weights sum to nh (one softmax per head): the bias / nh per row
    m = (torch.matmul(vh, wo) + att.out_proj.bias / nh).reshape(b, nh * t, -1)  # (B, nh*T, C)
    a_t = a.transpose(1, 2).contiguous().to(dt)  # (B, N, nh*T)
    if inplace:
        out = residual.baddbmm_(a_t, m.to(dt))
    else:
        md = m.to(dt)
        out = torch.baddbmm(residual, a_t, md, out=out) if out is not None else torch.baddbmm(residual, a_t, md)
    return out, a_t, m


def upscale_params(md) -> list:
    """The decoder tensors :func:`upscale_consts` and the cached ``k0z`` are derived from."""
    tr = md.transformer
    up = md.output_upscaling
    ps = [up[0].weight, up[0].bias, up[3].weight, up[3].bias]
    for layer in tr.layers:
        ps += [layer.norm4.weight, layer.norm4.bias]
    return ps


def upscale_consts(md) -> dict:
    """The upscaling's transposed convolutions as per-token matrices, ``w1`` (C, 4*c1) with
    columns (di, dj, c1) and ``w2`` (c1, 4*c2) with columns (di2, dj2, c2), their biases, and,
    for the 2-layer SAM decoder, the constants that assemble the first one from layer 0's
    pre-norm image tokens and low-rank updates (``fold``: see :func:`decode_boxes`)."""
    import torch

    tr = md.transformer
    ct1, ct2 = md.output_upscaling[0], md.output_upscaling[3]
    w1 = ct1.weight.permute(0, 2, 3, 1).reshape(ct1.weight.shape[0], -1).contiguous()
    b1 = ct1.bias.repeat(4)
    c = {"w1": w1, "b1": b1, "w2": ct2.weight.permute(0, 2, 3, 1).reshape(ct2.weight.shape[0], -1).contiguous(),
         "b2": ct2.bias.repeat(4), "fold": None}
    if len(tr.layers) == 2:
        n4a, n4b = tr.layers[0].norm4, tr.layers[1].norm4
        yb = n4b.weight[:, None] * w1  # diag(gamma_b) W1
        pyb = yb - yb.mean(0, keepdim=True)  # (I - 11^T/C) diag(gamma_b) W1
        c["fold"] = {"pyb": pyb, "z": n4a.weight[:, None] * pyb, "c_beta": torch.matmul(n4a.bias, pyb),
                     "const": torch.matmul(n4b.bias, w1) + b1}
    return c


def upscale_logits(md, keys, hyper, consts: dict, grid, chunk: int | None = None, y=None, ws=None):
    """``hyper @ output_upscaling(keys)`` for mask token 0: keys (B, N, C) channels-last image
    tokens of an (h, w) = ``grid`` grid, hyper (B, C // 8) -> logits (B, 1, 4h, 4w). ``y``: the first
    transposed convolution's (B, N, 4*c1) output when already computed; ``ws``: a
    :class:`Workspace` for the per-chunk products (None allocates).

    Both ConvTranspose2d(k=2, s=2) are per-token products (their 2x2 output blocks do not
    overlap): tokens (i, j) @ (C, (di, dj, c1)), LayerNorm2d over c1, GELU, @ (c1, (di2, dj2,
    c2)), GELU, dot hyper. Done ``chunk`` tokens at a time so the intermediates stay in cache;
    the (i, di, di2, j, dj, dj2) pixel order is a permute and a pixel shuffle at the end."""
    import torch
    import torch.nn.functional as F

    up = md.output_upscaling
    ct1, ln, act1, ct2, act2 = up[0], up[1], up[2], up[3], up[4]
    b, n = (keys if y is None else y).shape[:2]
    h, w = int(grid[0]), int(grid[1])
    chunk = int(chunk or UPSCALE_CHUNK)
    c1 = ct1.weight.shape[1]
    c2 = ct2.weight.shape[1]
    w1, b1, w2, b2 = consts["w1"], consts["b1"], consts["w2"], consts["b2"]
    g1 = getattr(act1, "approximate", "none")
    g2 = getattr(act2, "approximate", "none")
    gelu = isinstance(act1, torch.nn.GELU) and isinstance(act2, torch.nn.GELU)
    out = None
    for bi in range(b):
        hv = hyper[bi]
        for r0 in range(0, n, chunk):
            t1 = y[bi, r0:r0 + chunk] if y is not None else torch.addmm(b1, keys[bi, r0:r0 + chunk], w1)
            t1 = F.layer_norm(t1.reshape(-1, c1), (c1,), ln.weight, ln.bias, ln.eps)
            t1 = torch.ops.aten.gelu_(t1, approximate=g1) if gelu else act1(t1)
            z = torch.addmm(b2, t1, w2, out=ws.get("z", (t1.shape[0], w2.shape[1]), t1)) if ws is not None \
                else torch.addmm(b2, t1, w2)
            z = torch.ops.aten.gelu_(z, approximate=g2) if gelu else act2(z)
            part = torch.mv(z.view(-1, c2), hv.to(z.dtype))  # (rows * 16,)
            if out is None:
                out = torch.empty(b, n * 16, dtype=part.dtype, device=part.device)
            out[bi, r0 * 16:r0 * 16 + part.shape[0]] = part
    # (i, j, di, dj, di2, dj2) -> channels (di, di2, dj, dj2) of an (h, w) grid -> pixel shuffle
    out = out.view(b, h * w, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(b, 16, h, w)
    return F.pixel_shuffle(out, 4)


LN_ROWS = 1024  # rows per layer-norm call when writing into a workspace buffer (outputs < 2 MiB)


def layer_norm_stats(norm, x, out=None):
    """``norm(x)`` and its per-row 1/std (B, N, 1) (``torch.native_layer_norm``), written into
    ``out`` when given: ``LN_ROWS`` rows at a time, each result (< 2 MiB, so plain heap memory
    even with the app's huge-page tuning) copied into ``out``; ``native_layer_norm.out`` would
    allocate a full-size result and copy it."""
    import torch

    shape, w, b, eps = list(norm.normalized_shape), norm.weight, norm.bias, norm.eps
    if out is None:
        res, _mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
        return res, rstd
    c = x.shape[-1]
    flat, dst = x.reshape(-1, c), out.view(-1, c)
    rstds = []
    for r0 in range(0, flat.shape[0], LN_ROWS):
        res, _mean, rstd = torch.native_layer_norm(flat[r0:r0 + LN_ROWS], shape, w, b, eps)
        dst[r0:r0 + LN_ROWS].copy_(res)
        rstds.append(rstd)
    return out, torch.cat(rstds).view(x.shape[:-1] + (1,))


def decode_boxes(md, entry, pos, sparse, mark=lambda name: None, fold: bool = True, consts: dict | None = None,
                  ws: Workspace | None = None):
    """segment-anything ``MaskDecoder.forward(..., multimask_output=False)[0]`` for box prompts
    (``sparse`` (B, 2, 256) from the prompt encoder, dense = no_mask_embed) on the cached
    embedding ``entry``; ``pos`` (1, N, 256) dense PE tokens; ``consts``: :func:`upscale_consts`
    of ``md`` (computed when None; its upscaling matrices in the dtype of ``entry.keys0``, the
    dtype all products over the image tokens run in); ``ws``: buffers for the (B, N, C)
    intermediates (CPU without autocast; None allocates). Returns logits (B, 1, 256, 256), a new
    tensor in that dtype.

    ``fold`` (float32, 2-layer SAM decoder): the upscaling's first (N, C) @ (C, 4*c1) product is
    not run on the final image tokens ``keys2`` but assembled from the cache and two rank-(nh*T)
    products. With ``LN(x) = D (x P) G + beta`` (D = per-row 1/std, P = centring over channels,
    G = diag(gamma)), ``pre0 = keys0 + a0 @ m0``, ``keys1 = LN_a(pre0)``, ``pre1 = keys1 + a1 @
    m1`` and ``keys2 = LN_b(pre1)``:
    ``keys2 @ W1 = D_b (D_a (keys0 P @ Z + a0 @ (m0 P @ Z)) + a1 @ (m1 @ PY + 1 beta_a PY)) +
    beta_b W1`` with ``PY = P G_b W1`` and ``Z = G_a PY``; ``keys0 P @ Z`` is cached per embedding
    and ``a @ 1`` = heads (softmax rows), so the constant row rides in the second product.
    """
    import math

    import torch
    import torch.nn.functional as F

    tr = md.transformer
    consts = consts if consts is not None else upscale_consts(md)
    b = sparse.shape[0]
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1).to(sparse.dtype), sparse], dim=1)
    fold = bool(fold and entry.k0z is not None and consts["fold"] is not None
                and not torch.is_autocast_enabled(sparse.device.type))
    n_img, c_img = entry.keys0.shape[1:]

    def buf(i):  # two (B, N, C) buffers used in turn; None: allocate
        return ws.get(f"nc{i}", (b, n_img, c_img), entry.keys0) if ws is not None else None

    # layer 0 (no PE in its self-attention); image-side projections come from the cache
    l0 = tr.layers[0]
    q = l0.norm1(l0.self_attn(q=tokens, k=tokens, v=tokens))
    att = l0.cross_attn_token_to_image
    if entry.full:
        qh = split_heads(F.linear(q + tokens, att.q_proj.weight, att.q_proj.bias), att.num_heads)
        qh = (qh * (1.0 / math.sqrt(qh.shape[-1]))).to(entry.k0t.dtype)  # c = 16: an exact scale
        o = torch.matmul(torch.softmax(torch.matmul(qh, entry.k0t), dim=-1), entry.v0)
        o = F.linear(merge_heads(o).to(q.dtype), att.out_proj.weight, att.out_proj.bias)
        kp = entry.q0t  # the image->token scores come from the cached query projection
    else:  # light entry (first box on this embedding): as in the next layers
        kp = torch.add(entry.keys0, pos, out=ws.get("kp0", entry.keys0.shape, entry.keys0)) if ws is not None \
            else entry.keys0 + pos
        o = tokens_to_image(att, q + tokens, kp, entry.keys0)
    q = l0.norm2(q + o)
    q = l0.norm3(q + l0.mlp(q))
    att = l0.cross_attn_image_to_token
    pre, a0, m0 = image_to_tokens_add(att, entry.keys0, kp, q + tokens, q, projected=entry.full, inplace=False,
                                       out=buf(0))
    keys, rstd_a = layer_norm_stats(l0.norm4, pre, out=buf(1))
    free = 0  # the buffer not holding ``keys``
    mark("layer0")

    # layers 1.. (with PE)
    for layer in tr.layers[1:]:
        qp = q + tokens
        q = layer.norm1(q + layer.self_attn(q=qp, k=qp, v=q))
        kp = torch.add(keys, pos, out=buf(free)) if ws is not None else keys + pos
        q = layer.norm2(q + tokens_to_image(layer.cross_attn_token_to_image, q + tokens, kp, keys))
        q = layer.norm3(q + layer.mlp(q))
        att = layer.cross_attn_image_to_token
        pre, a1, m1 = image_to_tokens_add(att, keys, kp, q + tokens, q, projected=False, inplace=True)
        keys, rstd_b = layer_norm_stats(layer.norm4, pre, out=buf(free))  # kp is no longer needed
        free = 1 - free
    mark("layer1")

    # final token->image attention for mask token 0 only, then its hypernetwork MLP
    q1 = q[:, 1:2]
    kp = torch.add(keys, pos, out=buf(free)) if ws is not None else keys + pos
    o = tokens_to_image(tr.final_attn_token_to_image, q1 + tokens[:, 1:2], kp, keys)
    hyper = md.output_hypernetworks_mlps[0](tr.norm_final_attn(q1 + o)[:, 0])  # (B, 32)
    mark("final")

    y = None
    if fold:
        cf = consts["fold"]
        nh = tr.layers[1].cross_attn_image_to_token.num_heads
        q0z = torch.matmul(m0 - m0.mean(-1, keepdim=True), cf["z"])  # (B, nh*T, 4*c1)
        q1z = torch.matmul(m1, cf["pyb"]) + cf["c_beta"] / nh
        # y = D_b D_a k0z + [D_b D_a a0 | D_b a1 | 1] @ [q0z; q1z; const]: one pass, one product
        scale = (rstd_a * rstd_b).to(a0.dtype)  # (B, N, 1), in the products' dtype (no mixed-dtype passes)
        k0, k1 = a0.shape[-1], a1.shape[-1]
        a_cat = ws.get("a_cat", (b, n_img, k0 + k1 + 1), a0) if ws is not None else a0.new_empty(b, n_img, k0 + k1 + 1)
        torch.mul(a0, scale, out=a_cat[..., :k0])
        torch.mul(a1, rstd_b.to(a1.dtype), out=a_cat[..., k0:k0 + k1])
        a_cat[..., -1] = 1.0  # (B, N, 2*nh*T + 1)
        q_cat = torch.cat([q0z, q1z, cf["const"].expand(b, 1, -1)], dim=1).to(a_cat.dtype)
        y = buf(free) if entry.k0z.shape[-1] == c_img else None  # kp is no longer needed
        y = torch.mul(entry.k0z, scale, out=y) if y is not None else entry.k0z * scale
        y.baddbmm_(a_cat, q_cat)  # (B, N, 4*c1)
    logits = upscale_logits(md, keys, hyper, consts, entry.key.shape[-2:], y=y, ws=ws)
    mark("upscale")
    return logits
