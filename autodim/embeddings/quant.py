"""Precision, the third axis: quantization-aware training, post-training quantization and
packed inference tables.

A field's plan may carry ``precision = {"bits": b, "scale": "row" | "field", "train":
"qat" | "ptq", "dtype": "float16" | "bfloat16" (16 bits), "scalars": "float32" | "float16" |
"int8" (MEmCom's per-id scalars)}``. Storage (what :func:`table_bytes` counts and what
:class:`QuantizedEmbedding` holds):

- 32 bits: float32; 16 bits: float16 or bfloat16, no scales.
- 8 / 4 / 2 / 1 bits: unsigned codes ``q`` packed row by row (``ceil(d * b / 8)`` bytes a row,
  lowest bits first, as fbgemm's row-wise formats), value ``q * scale + offset``. ``row``
  granularity stores one float16 scale and one float16 offset per row (fbgemm's 4-/2-bit
  row-wise layout); ``field`` one float16 pair for the whole table.

Training (:class:`FakeQuantEmbedding`, a drop-in ``nn.Embedding``):

- ``qat``: fake quantization with a straight-through gradient for the rounding. For 8 bits
  the range is each row's (or the table's) min/max. For <= 4 bits the step size is learned
  as in LSQ (Esser et al., ICLR 2020) together with an offset (LSQ+, Bhalgat et al. 2020).
  Deviation, on purpose: LSQ learns the step ``s`` itself from a pretrained network; here
  tables train from scratch and their weights grow by orders of magnitude, so the learned
  quantities are a log-gain on the min/max step and a shift in steps
  (``s = s_minmax * exp(a)``, ``offset = mid - s * Qp / 2 + c * s``). Adam's step is then a
  relative change of the step size, which keeps pace with the weights; the gradients of
  ``a`` and ``c`` are LSQ's (through the same clamp/round straight-through estimator),
  scaled by LSQ's ``1 / sqrt(elements * Qp)``.
- ``ptq``: the table trains in float32; in eval mode it reads the quantized table, whose
  per-row ranges come from the greedy range search of Guan et al. 2019 (arXiv 1911.02079,
  section 3: shrink ``[min, max]`` bin by bin from the side that lowers the L2 error most,
  keep the best; 200 bins, at most 16 % of the range, fbgemm's defaults).

Inference (:class:`QuantizedEmbedding`): packed codes, float16 scales and offsets, in one
buffer in the layout of torch's quantized embedding-bag kernels that is also the table's
storage (a row's codes, then its scale and offset; the 8-bit kernel wants float32 scales:
the float16 ones widen exactly). 8-, 4- and 2-bit tables are read with those kernels
(``quantized::embedding_bag_byte_rowwise_offsets`` / ``embedding_bag_4bit_rowwise_offsets`` /
``embedding_bag_2bit_rowwise_offsets``). Row-scaled 1-bit tables, which no kernel reads,
and tables on a device where torch has no such kernel (CUDA: none for 2 bits, none for 8 /
4 bits when a row is not a multiple of 4 bytes) are read by :func:`read_unpacked` from the
same layout; field-scaled tables at 1 bit or of one value a row hold their codes as
stored and read each byte from a value table with the scale folded in (:func:`read_coded`).
:func:`pack_model` turns a trained model's fake-quantized tables into these.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from autodim.embeddings.gather import Embedding

__all__ = ["ALLOWED_BITS", "SCALE_GRANULARITIES", "TRAIN_MODES", "SCALAR_DTYPES",
           "normalize_precision", "table_bytes", "scalar_bytes", "row_bytes",
           "FakeQuantEmbedding", "QuantizedEmbedding", "quantize_tensor", "range_search",
           "apply_precision", "pack_model", "packed_skeleton", "has_fake_quant",
           "torchrec_data_type"]

ALLOWED_BITS = (32, 16, 8, 4, 2, 1)
SCALE_GRANULARITIES = ("row", "field")
TRAIN_MODES = ("qat", "ptq")
SCALAR_DTYPES = ("float32", "float16", "int8")
HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SCALE_BYTES = 4  # one float16 scale + one float16 offset


def normalize_precision(p: Mapping[str, Any] | None) -> dict[str, Any]:
    """The precision entry with its defaults filled in (``None`` = float32)."""
    p = dict(p or {})
    bits = p.get("bits", 32)
    out = {"bits": bits, "scale": p.get("scale", "row"), "train": p.get("train", "qat"),
           "scalars": p.get("scalars", "float32" if bits == 32 else "float16")}
    if bits == 16:
        out["dtype"] = p.get("dtype", "float16")
    return out


def row_bytes(dim: int, bits: int) -> int:
    """Bytes of one packed row of ``dim`` values at ``bits`` (no scales)."""
    return math.ceil(dim * bits / 8)


def table_bytes(rows: int, dim: int, precision: Mapping[str, Any] | None) -> int:
    """Exact stored bytes of a ``rows x dim`` table at ``precision``."""
    p = normalize_precision(precision)
    bits = p["bits"]
    if rows == 0 or dim == 0:
        return 0
    if bits >= 16:
        return rows * dim * bits // 8
    scales = rows * SCALE_BYTES if p["scale"] == "row" else SCALE_BYTES
    return rows * row_bytes(dim, bits) + scales


def scalar_precision(precision: Mapping[str, Any] | None) -> dict[str, Any]:
    """The precision of MEmCom's per-id scalars (int8: one float16 pair for the field)."""
    s = normalize_precision(precision)["scalars"]
    if s == "int8":
        return {"bits": 8, "scale": "field", "train": normalize_precision(precision)["train"]}
    return {"bits": 16, "dtype": "float16"} if s == "float16" else {"bits": 32}


def scalar_bytes(rows: int, precision: Mapping[str, Any] | None) -> int:
    return table_bytes(rows, 1, scalar_precision(precision))


def torchrec_data_type(precision: Mapping[str, Any] | None) -> str:
    """TorchRec ``DataType`` name of a table at ``precision`` (FP32/FP16/BF16/INT8/INT4/INT2;
    1 bit has no TorchRec type and is shipped as INT2 codes with a note)."""
    p = normalize_precision(precision)
    return {32: "FP32", 16: "BF16" if p.get("dtype") == "bfloat16" else "FP16",
            8: "INT8", 4: "INT4", 2: "INT2", 1: "INT2"}[p["bits"]]


# -- quantization arithmetic ------------------------------------------------------------
def _f16(x: torch.Tensor) -> torch.Tensor:
    """Round to float16 (what is stored) with a straight-through gradient."""
    return x + (x.to(torch.float16).to(x.dtype) - x).detach()


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward ``x``, backward ``g * grad`` (LSQ's gradient scale)."""
    return (x - x * g).detach() + x * g


def _fake_quant(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, qmax: int
                ) -> torch.Tensor:
    """``round(clamp((w - offset) / scale, 0, qmax)) * scale + offset`` with the STE."""
    q = _ste_round(torch.clamp((w - offset) / scale, 0, qmax))
    return q * scale + offset


def _minmax_qparams(lo: torch.Tensor, hi: torch.Tensor, qmax: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """float16-rounded (scale, offset) for the range ``[lo, hi]``."""
    scale = ((hi - lo) / qmax).to(torch.float16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant rows: q = 0
    return scale, lo.to(torch.float16).float()


def quantize_tensor(w: torch.Tensor, bits: int, scale: torch.Tensor, offset: torch.Tensor
                    ) -> torch.Tensor:
    """Integer codes (uint8, one per value) of ``w`` for float16 ``scale``/``offset``
    (``[rows, 1]`` or ``[1, 1]``)."""
    qmax = (1 << bits) - 1
    q = torch.round(torch.clamp((w - offset.float()) / scale.float(), 0, qmax))
    return q.to(torch.uint8)


def _l2(w: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, qmax: int) -> torch.Tensor:
    scale, offset = _minmax_qparams(lo, hi, qmax)
    q = torch.round(torch.clamp((w - offset[:, None]) / scale[:, None], 0, qmax))
    return ((q * scale[:, None] + offset[:, None] - w) ** 2).sum(1)


def range_search(w: torch.Tensor, bits: int, *, nbins: int = 200, ratio: float = 0.16
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(lo, hi)`` minimising the L2 quantization error (Guan et al. 2019, greedy).

    ``w`` is ``[rows, d]``; pass ``w.reshape(1, -1)`` for one range over the whole table.
    """
    qmax = (1 << bits) - 1
    w = w.detach().float()
    lo, hi = w.min(1).values, w.max(1).values
    step = (hi - lo) / nbins
    best_err, best_lo, best_hi = _l2(w, lo, hi, qmax), lo.clone(), hi.clone()
    cur_lo, cur_hi = lo.clone(), hi.clone()
    for _ in range(int(nbins * ratio)):
        e_lo = _l2(w, cur_lo + step, cur_hi, qmax)
        e_hi = _l2(w, cur_lo, cur_hi - step, qmax)
        take_lo = e_lo < e_hi
        cur_lo = torch.where(take_lo, cur_lo + step, cur_lo)
        cur_hi = torch.where(take_lo, cur_hi, cur_hi - step)
        err = torch.minimum(e_lo, e_hi)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, cur_lo, best_lo)
        best_hi = torch.where(better, cur_hi, best_hi)
    return best_lo, best_hi


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """``[rows, d]`` codes -> ``[rows, ceil(d * bits / 8)]`` uint8, lowest bits first."""
    per = 8 // bits
    rows, d = q.shape
    width = math.ceil(d / per)
    padded = torch.zeros(rows, width * per, dtype=torch.int32)
    padded[:, :d] = q.to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32) * bits
    return (padded.view(rows, width, per) << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes` (any leading shape)."""
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    q = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return q.flatten(-2)[..., :dim]


# -- training-time table --------------------------------------------------------------------
class FakeQuantEmbedding(Embedding):
    """An ``nn.Embedding`` whose reads are quantized as the plan's precision says (see the
    module docstring). Keeps float32 master weights; :meth:`export` gives the packed form.
    ``num_bytes()`` is the packed form's size."""

    def __init__(self, rows: int, dim: int, precision: Mapping[str, Any], *,
                 sparse: bool = False):
        super().__init__(rows, dim, sparse=sparse)
        self.precision = normalize_precision(precision)
        self.bits = self.precision["bits"]
        self.row_scale = self.precision["scale"] == "row"
        self.qat = self.precision["train"] == "qat"
        self.qmax = (1 << self.bits) - 1 if self.bits <= 8 else 0
        self.learned = self.qat and self.bits <= 4
        if self.learned:
            # log-gain on the min/max step and shift in steps (see the module docstring).
            if self.row_scale:
                self.lsq = Embedding(rows, 2, sparse=sparse)
                nn.init.zeros_(self.lsq.weight)
            else:
                self.lsq_field = nn.Parameter(torch.zeros(2))
        self._ptq_cache: torch.Tensor | None = None

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, precision: Mapping[str, Any]
                       ) -> "FakeQuantEmbedding":
        out = cls(emb.num_embeddings, emb.embedding_dim, precision, sparse=emb.sparse)
        with torch.no_grad():
            out.weight.copy_(emb.weight)
        return out

    def num_bytes(self) -> int:
        return table_bytes(self.num_embeddings, self.embedding_dim, self.precision)

    def train(self, mode: bool = True):
        self._ptq_cache = None
        return super().train(mode)

    # -- the quantizer's parameters ---------------------------------------------------------
    def _qparams(self, rows: torch.Tensor, ids: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """float16-rounded (scale, offset), broadcastable to ``rows`` (``[..., d]``)."""
        if self.row_scale:
            lo = rows.detach().amin(-1, keepdim=True)
            hi = rows.detach().amax(-1, keepdim=True)
        else:
            lo, hi = torch.aminmax(self.weight.detach())
        step = ((hi - lo) / self.qmax).clamp_min(1e-8)
        if not self.learned:
            scale, offset = _minmax_qparams(lo, hi, self.qmax)
            return scale, offset
        if self.row_scale:
            ac = self.lsq(ids) if ids is not None else self.lsq.weight
            n_per = self.embedding_dim
        else:
            ac = self.lsq_field.expand(*rows.shape[:-1], 2)
            n_per = self.weight.numel()
        ac = _grad_scale(ac, 1.0 / math.sqrt(n_per * self.qmax))
        a, c = ac[..., :1], ac[..., 1:]
        scale = _f16(step * torch.exp(a))
        offset = _f16((lo + hi) / 2 - scale * (self.qmax / 2) + c * scale)
        return scale, offset

    def _quantized_rows(self, rows: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        if self.bits == 32:
            return rows
        if self.bits == 16:
            half = HALF_DTYPES[self.precision["dtype"]]
            return rows + (rows.to(half).float() - rows).detach()
        scale, offset = self._qparams(rows, ids)
        return _fake_quant(rows, scale, offset, self.qmax)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.qat and self.bits < 32:
            if self.training:
                return super().forward(ids)
            if self._ptq_cache is None:
                self._ptq_cache = self.dequantized()
            return nn.functional.embedding(ids, self._ptq_cache)
        return self._quantized_rows(super().forward(ids), ids)

    # -- the packed form ---------------------------------------------------------------------
    @torch.no_grad()
    def export(self) -> dict[str, torch.Tensor]:
        """The stored tensors: ``weight`` (32/16 bits) or ``codes``, ``scale``, ``offset``."""
        w = self.weight.detach().float()
        if self.bits == 32:
            return {"weight": w.clone()}
        if self.bits == 16:
            return {"weight": w.to(HALF_DTYPES[self.precision["dtype"]])}
        if self.qat:
            scale, offset = self._qparams(w, None)
            n = w.shape[0] if self.row_scale else 1  # a field scale is one pair
            scale = scale.reshape(-1)[:n].reshape(-1, 1)
            offset = offset.reshape(-1)[:n].reshape(-1, 1)
        else:
            flat = w if self.row_scale else w.reshape(1, -1)
            lo, hi = range_search(flat, self.bits)
            scale, offset = _minmax_qparams(lo, hi, self.qmax)
            scale, offset = scale[:, None], offset[:, None]
        q = quantize_tensor(w, self.bits, scale, offset)
        return {"codes": pack_codes(q, self.bits), "scale": scale.reshape(-1).half(),
                "offset": offset.reshape(-1).half()}

    @torch.no_grad()
    def dequantized(self) -> torch.Tensor:
        """The float32 table a reader of :meth:`export` sees."""
        t = self.export()
        if "weight" in t:
            return t["weight"].float()
        q = unpack_codes(t["codes"], self.bits, self.embedding_dim).float()
        return q * t["scale"].float()[:, None] + t["offset"].float()[:, None]


def _scale_pair(scale: torch.Tensor, offset: torch.Tensor, bits: int) -> torch.Tensor:
    """Bytes of each row's scale and offset as fbgemm's kernels read them after the codes
    (:func:`_scale_dtype`)."""
    dtype = _scale_dtype(bits)
    pair = torch.stack([scale.to(dtype), offset.to(dtype)], 1)
    return pair.contiguous().view(torch.uint8)


# -- inference-time table -------------------------------------------------------------------
# Resolved once (an attribute lookup on torch.ops per call costs microseconds); kept out of
# the modules so that they stay picklable.
_KERNELS = {8: torch.ops.quantized.embedding_bag_byte_rowwise_offsets.default,
            4: torch.ops.quantized.embedding_bag_4bit_rowwise_offsets.default,
            2: torch.ops.quantized.embedding_bag_2bit_rowwise_offsets.default}


# Per (device type, bits): whether torch has the kernel for that device. On CPU all three
# exist; torch's CUDA build has the 8- and 4-bit ones only (seen with torch 2.11 on an H200:
# the 2-bit one raises NotImplementedError), and they refuse rows whose values are not a
# multiple of 4 bytes ("Expected D % 4 == 0" for 8 bits, "D % 8" for 4), which the CPU ones
# read. Anything else reads through :func:`read_unpacked`.
_ON_DEVICE: dict[tuple[str, int], bool] = {}


def kernel_reads(packed: torch.Tensor, bits: int) -> bool:
    """Whether torch's kernel reads ``packed`` (a table in the kernels' layout) where it is."""
    if packed.is_cpu:  # (is_cpu: a quarter of device.type's microsecond, on every read)
        return bits in _KERNELS  # not 1 bit
    if bits not in _KERNELS:
        return False
    kind = packed.device.type
    ok = _ON_DEVICE.get((kind, bits))
    if ok is None:
        name = _KERNELS[bits].name()
        try:
            ok = torch._C._dispatch_has_kernel_for_dispatch_key(name, kind.upper())
        except (AttributeError, RuntimeError):
            ok = False
        _ON_DEVICE[(kind, bits)] = ok
    return ok and (packed.shape[1] - (8 if bits == 8 else 4)) % 4 == 0


def read_packed(packed: torch.Tensor, bits: int, dim: int, rows: torch.Tensor,
                offsets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Bags of rows of a table in the kernels' layout (``bits`` 8, 4, 2 or 1): ``[bags, dim]``
    float32, each bag the sum of its rows (times ``weights`` when given). The kernel reads
    every value of a row's last byte; the columns past ``dim`` are dropped. Where torch has
    no kernel for the bits, the table's device and row width, :func:`read_unpacked` reads
    it; bags then hold at least one row each (every caller's bags do: one id, or a field's
    columns), so as many bags as rows is one row a bag."""
    if not kernel_reads(packed, bits):  # as many bags as rows: one row each (see above)
        return read_unpacked(packed, bits, dim, rows,
                             None if offsets.shape[0] == rows.shape[0] else offsets, weights)
    # (weight, indices, offsets, scale_grad_by_freq, mode=sum, pruned_weights,
    #  per_sample_weights, compressed_indices_mapping, include_last_offset)
    out = _KERNELS[bits](packed, rows, offsets, False, 0, False, weights, None, False)
    return out[:, :dim] if out.shape[1] != dim else out


def read_unpacked(packed: torch.Tensor, bits: int, dim: int, rows: torch.Tensor,
                  offsets: torch.Tensor | None, weights: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """What :func:`read_packed`'s kernel computes, in plain tensor operations (any device):
    gather the rows, unpack their codes, ``q * scale + offset`` from each row's tail, and
    sum each bag (``offsets``: each bag's first row, as the kernel's; empty bags give 0;
    ``None``: one row a bag)."""
    dtype = _scale_dtype(bits)
    nb = packed.shape[1] - 2 * dtype.itemsize  # each row ends in its scale and offset
    got = packed.index_select(0, rows)
    if got.shape[1] % dtype.itemsize == 0:  # the rows read as scale / offset words in place
        pair = got.view(dtype)[:, -2:].float()
    else:  # a copy, not .contiguous(): one row's tail is contiguous already, at an odd offset
        pair = got[:, nb:].clone(memory_format=torch.contiguous_format).view(dtype).float()
    n = rows.shape[0]
    if bits == 8:
        q = got[:, :dim].float()
    else:  # each byte's values from a 256-row table: one gather, not shifts and masks
        q = nn.functional.embedding(got[:, :nb].to(torch.int32),
                                    _byte_values(bits, packed.device)).view(n, -1)[:, :dim]
    # in place where q is whole rows, not addcmul: its broadcast of the [n, 1] columns
    # costs 4x (1 bit, 32k rows of 16 values, one thread: 630 against 150 us); a slice
    # (dims that leave a byte part empty) is faster through addcmul's fresh output
    v = (q.mul_(pair[:, :1]).add_(pair[:, 1:]) if q.is_contiguous()
         else torch.addcmul(pair[:, 1:], q, pair[:, :1]))
    if offsets is None:
        return v if weights is None else v * weights.unsqueeze(1)
    # the bags: one weighted embedding_bag over the unpacked rows in order (empty bags 0)
    return nn.functional.embedding_bag(torch.arange(n, device=rows.device), v, offsets,
                                       mode="sum", per_sample_weights=weights)


def read_coded(codes: torch.Tensor, lut: torch.Tensor, rows: torch.Tensor,
               base: torch.Tensor | None, dim: int) -> torch.Tensor:
    """``[*rows.shape, dim]``: rows of coded tables (:class:`QuantizedEmbedding`; ``codes``,
    one or several tables' rows one after the other), each byte read from ``lut`` (256 rows
    a table: a byte's values; ``base``: where each id's table starts in ``lut``,
    broadcastable to ``rows``, or ``None`` for one table). Two gathers, the float values
    exact."""
    got = codes.index_select(0, rows.reshape(-1)).view(*rows.shape, codes.shape[1])
    idx = got.int() if base is None else got + base.unsqueeze(-1)  # uint8 + int: an int
    flat = lut.view(-1) if lut.shape[1] == 1 else lut  # one value a byte: a plain gather
    v = flat.index_select(0, idx.reshape(-1)).view(*rows.shape, -1)
    return v if v.shape[-1] == dim else v[..., :dim]


_BYTE_VALUES: dict[tuple[int, torch.device], torch.Tensor] = {}


def _byte_values(bits: int, device: torch.device) -> torch.Tensor:
    """``[256, 8 // bits]`` float32: the codes a byte holds, lowest bits first (one per
    bits and device, shared by every table: 8 KiB at most)."""
    table = _BYTE_VALUES.get((bits, device))
    if table is None:
        table = _BYTE_VALUES[(bits, device)] = unpack_codes(
            torch.arange(256, dtype=torch.uint8, device=device)[:, None], bits,
            8 // bits).float()
    return table


def one_id_per_bag(cached: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """Offsets ``0 .. n-1`` for ``n`` rows of one id each: ``cached`` when it fits (per-call
    Python and allocation overhead is what decides small-batch latency), also on the rows'
    device (a moved table's cache is rebuilt here)."""
    n = rows.shape[0]
    if (cached is None or cached.shape[0] != n or cached.dtype != rows.dtype
            or cached.is_cpu != rows.is_cpu  # (is_cpu first: cheaper than .device)
            or not rows.is_cpu and cached.device != rows.device):
        cached = torch.arange(n, dtype=rows.dtype, device=rows.device)
    return cached


def _scale_dtype(bits: int) -> torch.dtype:
    """Scales and offsets in the kernels' layout: float32 for 8 bits (the stored float16
    values widen exactly), float16 below."""
    return torch.float32 if bits == 8 else torch.float16


class QuantizedEmbedding(nn.Module):
    """A packed table (see the module docstring); ``forward(ids) -> [..., d]`` float32.

    Its state dict holds ``codes``, ``scale`` and ``offset`` (or ``weight`` at 16 / 32 bits)
    whatever the storage. An 8-, 4-, 2- or row-scaled 1-bit table keeps them in ONE
    buffer, ``packed``, in the layout fbgemm's kernels read (a row's codes, then its scale
    and offset: float16 below 8 bits, float32 for 8; a field scale repeated on every row),
    so nothing is held twice: resident bytes are :func:`table_bytes` for row-scaled 4 / 2 /
    1 bits, plus 4 bytes a row for 8 bits (float32 scales) and for field scales (repeated);
    ``codes`` is then a view of the buffer and ``scale`` / ``offset`` copies read out of it.
    A field-scaled table at 1 bit or of one value a row (``coded``: MEmCom's int8 scalars)
    holds its codes and its one scale and offset as stored, plus ``lut``, the 256 byte
    values times the scale plus the offset (at most 8 KiB, built at load), which it reads
    each byte from (:func:`read_coded`): the repeated pair would be twice the codes of a
    16-dim 1-bit row and 8 times a one-value row's byte, and at 1 bit the kernels' layout
    read slower (MovieLens-100K, one thread, 4096 rows: 1.8 against 1.5x the float32
    model). For wider 8 / 4 / 2-bit rows the same byte tables were measured and not kept:
    the kernels' fused reads are several times faster than two plain gathers of small rows
    (int4 / int8 field-scaled, 4096 rows: 2.2 / 3.3x the float32 model against 0.97x).
    """

    def __init__(self, rows: int, dim: int, precision: Mapping[str, Any]):
        super().__init__()
        self.precision = normalize_precision(precision)
        self.bits = self.precision["bits"]
        self.num_embeddings, self.embedding_dim = rows, dim
        self.row_bytes = row_bytes(dim, self.bits) if self.bits < 16 else 0
        # Row-scaled 1 bit too: no kernel reads it, but the layout lets 1-bit fields of one
        # dim serve as one buffer like the others (a served Criteo / 100 model, one thread:
        # 15.7 / 8.0 / 2.9x the float32 model at 1 / 256 / 4096 rows when each field read
        # its own codes through a byte-to-values table)
        self.field_scale = self.precision["scale"] == "field"
        # One field scale at 1 bit, or on rows of one value (MEmCom's int8 scalars): the
        # codes as stored and a byte table with the scale folded in (one gather of the
        # codes, one of the values; see the class docstring). In the kernels' layout a
        # one-value row holds 1 code byte and 8 bytes of repeated scale and offset.
        self.coded = self.field_scale and (self.bits == 1 or dim == 1)
        self.kernel_layout = self.bits <= 8 and not self.coded
        if self.bits >= 16:
            dtype = torch.float32 if self.bits == 32 else HALF_DTYPES[self.precision["dtype"]]
            self.register_buffer("weight", torch.zeros(rows, dim, dtype=dtype))
        elif self.kernel_layout:
            tail = _scale_pair(torch.ones(rows), torch.zeros(rows), self.bits)
            packed = torch.cat([torch.zeros(rows, self.row_bytes, dtype=torch.uint8), tail], 1)
            self.register_buffer("packed", packed, persistent=False)
        else:
            self.register_buffer("codes", torch.zeros(rows, self.row_bytes, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(1, dtype=torch.float16))
            self.register_buffer("offset", torch.zeros(1, dtype=torch.float16))
            self.register_buffer("lut", self._values(), persistent=False)
            self.register_load_state_dict_post_hook(QuantizedEmbedding._refresh_lut)
        self._offsets: torch.Tensor | None = None

    def _values(self) -> torch.Tensor:
        """``[256, 8 // bits]``: what each byte of a coded table reads as."""
        return torch.addcmul(self.offset.float(), _byte_values(self.bits, self.codes.device),
                             self.scale.float())

    @staticmethod
    def _refresh_lut(module: "QuantizedEmbedding", _keys: Any) -> None:
        with torch.no_grad():  # in place: a served group's table holds a view of it
            module.lut.copy_(module._values())

    # -- the one-buffer form: the stored tensors as views / copies of ``packed`` -----------
    def __getattr__(self, name: str) -> Any:
        if name in ("codes", "scale", "offset") and self.__dict__.get("kernel_layout"):
            packed = self._buffers["packed"]
            if name == "codes":
                return packed[:, :self.row_bytes]
            pair = packed[:, self.row_bytes:].contiguous().view(_scale_dtype(self.bits))
            if self.field_scale:
                pair = pair[:1]
            return pair[:, 0 if name == "scale" else 1].to(torch.float16)
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.kernel_layout:
            for name in ("codes", "scale", "offset"):
                destination[prefix + name] = getattr(self, name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if not self.kernel_layout:
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                                 missing_keys, unexpected_keys, error_msgs)
        rows, nb = self.num_embeddings, self.row_bytes
        n = 1 if self.field_scale else rows
        want = {"codes": ((rows, nb), torch.uint8), "scale": ((n,), torch.float16),
                "offset": ((n,), torch.float16)}
        got = {}
        for name, (shape, dtype) in want.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
            elif tuple(state_dict[key].shape) != shape or state_dict[key].dtype != dtype:
                t = state_dict[key]
                error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                                  f"{tuple(t.shape)} ({t.dtype}), the table holds {shape} "
                                  f"({dtype})")
            else:
                got[name] = state_dict[key]
        if strict:
            unexpected_keys += [k for k in state_dict if k.startswith(prefix)
                                and k[len(prefix):].split(".", 1)[0] not in want]
        if len(got) == len(want):
            with torch.no_grad():
                packed = self._buffers["packed"]
                packed[:, :nb] = got["codes"].to(packed.device)
                tail = _scale_pair(got["scale"].expand(rows), got["offset"].expand(rows),
                                   self.bits)
                packed[:, nb:] = tail.to(packed.device)

    def num_bytes(self) -> int:
        return table_bytes(self.num_embeddings, self.embedding_dim, self.precision)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.bits >= 16:
            return nn.functional.embedding(ids, self.weight).float()
        flat = ids.reshape(-1).contiguous()
        if self.coded:
            return read_coded(self.codes, self.lut, flat, None, self.embedding_dim).reshape(
                *ids.shape, self.embedding_dim)
        self._offsets = one_id_per_bag(self._offsets, flat)  # one id per bag
        out = read_packed(self._buffers["packed"], self.bits, self.embedding_dim, flat,
                          self._offsets)
        if ids.dim() == 2:
            return out.view(ids.shape[0], ids.shape[1], out.shape[1])
        return out.reshape(*ids.shape, self.embedding_dim)


# -- wiring into tables and models ------------------------------------------------------------
def apply_precision(table: nn.Module, precision: Mapping[str, Any] | None) -> nn.Module:
    """Make a freshly built table read its weights at ``precision`` (in place).

    Dense and hashed tables quantize their one table; MEmCom quantizes its shared table and
    stores its per-id scalars as ``precision["scalars"]`` says. Other tables are refused by
    plan validation before they get here.
    """
    from autodim.embeddings.tables import DenseTable, HashTable, MEmComTable

    p = normalize_precision(precision)
    if isinstance(table, (DenseTable, HashTable)):
        if p["bits"] != 32:
            table.embedding = FakeQuantEmbedding.from_embedding(table.embedding, p)
    elif isinstance(table, MEmComTable):
        if p["bits"] != 32:
            table.shared = FakeQuantEmbedding.from_embedding(table.shared, p)
        sp = scalar_precision(p)
        if sp["bits"] != 32:
            table.scale = FakeQuantEmbedding.from_embedding(table.scale, sp)
    elif p["bits"] != 32 or p["scalars"] != "float32":
        raise ValueError(f"{type(table).__name__} cannot be quantized")
    return table


def pack_model(model: nn.Module) -> nn.Module:
    """Replace every :class:`FakeQuantEmbedding` in ``model`` by its packed
    :class:`QuantizedEmbedding` (in place; returns ``model``)."""
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, FakeQuantEmbedding):
                packed = QuantizedEmbedding(child.num_embeddings, child.embedding_dim,
                                            child.precision)
                packed.load_state_dict(child.export())
                setattr(mod, child_name, packed)
    return model


def packed_skeleton(model: nn.Module) -> nn.Module:
    """Like :func:`pack_model` but with empty packed tables (to load stored tensors into)."""
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, FakeQuantEmbedding):
                setattr(mod, child_name, QuantizedEmbedding(
                    child.num_embeddings, child.embedding_dim, child.precision))
    return model


def has_fake_quant(model: nn.Module) -> bool:
    return any(isinstance(m, FakeQuantEmbedding) for m in model.modules())
